// The search's settings are the library's (the page's search form uses them too).
export { OPTIMIZE_DEFAULTS, OPTIMIZE_KEYS, OPTIMIZE_SCHEMA, optimizeSettingsFrom, pinsFrom, type OptimizeValues } from '../index.ts';
