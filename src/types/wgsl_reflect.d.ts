// The package's "main" is CommonJS inside a "type": "module" package, so Node cannot import it;
// we import the ES module file directly and give it the package's own types.
declare module 'wgsl_reflect/wgsl_reflect.module.js' {
  export * from 'wgsl_reflect';
}
