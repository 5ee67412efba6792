// herald.js as an ES module: `import Herald from "/herald.mjs"` or `import { connect } from "/herald.mjs"`.
// The classic script defines globalThis.Herald when it runs, also when imported as a module.
import "./herald.js";

const Herald = globalThis.Herald;
export default Herald;
export const connect = Herald.connect;
export const transports = Herald.transports;
