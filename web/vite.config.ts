import { defineConfig } from 'vite';
import { pageConfig } from './vite/pageConfig.ts';

// ABLITERATE_WEB_MODEL names another model folder to offer with one click (default: models/tiny-chat).
export default defineConfig(pageConfig({ model: process.env.ABLITERATE_WEB_MODEL || undefined }));
