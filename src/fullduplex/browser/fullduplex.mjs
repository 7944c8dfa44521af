// fullduplex.mjs: the ES module form of fullduplex.js (the single source of the library).
//
//   import { Client } from "/fullduplex.mjs";
//
// Importing fullduplex.js runs it (as module code: it is written to be valid as both) and it
// sets globalThis.fullduplex; this file re-exports those objects. No build step.
import "./fullduplex.js";

const api = globalThis.fullduplex;
export const Client = api.Client;
export const TRANSPORTS = api.TRANSPORTS;
export const DEFAULTS = api.DEFAULTS;
export const fullJitter = api.fullJitter;
export const SSEParser = api.SSEParser;
export const version = api.version;
export default api;
