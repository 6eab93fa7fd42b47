// Stylesheets imported by a page's script: esbuild writes them beside the bundle.
declare module '*.css';
