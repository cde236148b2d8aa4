// thaw's JavaScript engine: StarlingMonkey (through componentize-js) with this bootstrap,
// serving any function deployed as source. One engine serves every JS function of a host; a
// function is only its source.
//
// - `prepare` runs once, at deploy, in a validation instance: it parses every module with
//   acorn and rewrites its ES module syntax (import, export) into a plain function body, so
//   that an instance needs no parser and no module loader, only an eval (the engine
//   cannot `import()` at run time: StarlingMonkey's loader reads files through a preopen
//   table that the build-time snapshot leaves stale). Parsing costs milliseconds here (no
//   JIT); evaluating the rewritten text a fraction of one.
// - `load` runs once per instance, before its first request: it evaluates the entry module
//   and what it imports, and finds the handler.
// - The fetch listener below is registered now, at build time (StarlingMonkey takes
//   listeners only then), and hands each request to the loaded handler.
//
// The rewrite keeps every line where it was, so line numbers in errors and stacks are the
// source's. Imports are not live bindings and cycles see a partly filled module; top-level
// await and import.meta are refused at deploy.
//
// Compiled ahead, in a snapshot: SpiderMonkey compiles a function's bytecode on its first
// call. StarlingMonkey compiles its own script with every function compiled up front
// (setForceFullParse), so a componentized function's handler is bytecode in its snapshot;
// `eval`, the only compiler open to JavaScript at run time, leaves functions lazy, so every
// instance of a source function's snapshot parsed and compiled its handler again on its
// first request (perf, debug build: SpiderMonkey's parser and emitter per request, none in
// the component's). The rewrite therefore starts the body of each module-level function
// and each method of a module-level object literal with a guard (`GUARD` below), and the
// snapshot's run calls each of them once with the guard on: the call compiles the function
// and returns before any of its code runs. Only functions whose parameters are plain names
// are guarded (a default value or a pattern would run code before the guard), and a
// function is called only if its own text carries the guard; the warm-up uses only
// built-ins taken when this file loaded, so a program that replaces one (toString, Set,
// Promise) runs none of its code there. Trade-offs: an instance pays a typeof and a property
// read per call of a guarded function; a guarded function's text (`toString`) shows the
// guard, which is harmless where the text is evaluated again (the typeof); functions nested
// in others are still compiled on their first call; and the warm-up stops after
// `COMPILE_AHEAD_CHARS` of function text, so that a large bundle's snapshot does not grow by
// the bytecode of functions a request may never call.
import { Parser } from "./acorn.mjs";
import * as thaw from "./thaw.js";
import * as wasiConfig from "wasi:config/store@0.2.0-rc.1";
import * as wasiKeyvalue from "wasi:keyvalue/store@0.2.0-draft";
import * as wasiAtomics from "wasi:keyvalue/atomics@0.2.0-draft";
import * as wasiOutgoing from "wasi:http/outgoing-handler@0.2.10";
import * as wasiHttpTypes from "wasi:http/types@0.2.10";

// What `import ... from "<name>"` gives without a file: the helper module, and the
// interfaces it is written over (so a function carrying its own copy of thaw.js works too).
const BUILTIN = new Map([
  ["thaw", thaw],
  ["wasi:config/store@0.2.0-rc.1", wasiConfig],
  ["wasi:keyvalue/store@0.2.0-draft", wasiKeyvalue],
  ["wasi:keyvalue/atomics@0.2.0-draft", wasiAtomics],
  ["wasi:http/outgoing-handler@0.2.10", wasiOutgoing],
  ["wasi:http/types@0.2.10", wasiHttpTypes],
]);

const JS = /\.m?js$/;

// ---- prepare: ES modules to function bodies -------------------------------------------

class DeployError extends Error {}

// Text of the same number of lines as `text`, holding `code`: a rewrite keeps line numbers.
function sameLines(text, code) {
  const lines = text.split("\n").length - 1;
  return code + "\n".repeat(lines);
}

function bound(pattern, names) {
  switch (pattern.type) {
    case "Identifier":
      names.push(pattern.name);
      break;
    case "ObjectPattern":
      for (const p of pattern.properties) bound(p.type === "RestElement" ? p.argument : p.value, names);
      break;
    case "ArrayPattern":
      for (const p of pattern.elements) if (p) bound(p, names);
      break;
    case "RestElement":
      bound(pattern.argument, names);
      break;
    case "AssignmentPattern":
      bound(pattern.left, names);
      break;
  }
  return names;
}

const nameOf = (node) => (node.type === "Literal" ? String(node.value) : node.name);

function rewrite(path, text) {
  let ast;
  try {
    ast = Parser.parse(text, { ecmaVersion: "latest", sourceType: "module", locations: true });
  } catch (e) {
    const loc = e.loc ? `${e.loc.line}:${e.loc.column + 1}` : "1:1";
    throw new DeployError(`${path}:${loc}: SyntaxError: ${e.message.replace(/ \(\d+:\d+\)$/, "")}`);
  }
  // Top-level await and import.meta have no equivalent in a function body.
  const meta = findNode(ast, (node) => node.type === "MetaProperty" && node.meta.name === "import");
  if (meta) {
    throw new DeployError(
      `${path}:${meta.loc.start.line}:${meta.loc.start.column + 1}: import.meta is not supported in a source function`,
    );
  }
  const edits = []; // [start, end, replacement]
  const getters = []; // [exported, local]
  const spec = (source) => JSON.stringify(source.value);
  for (const node of ast.body) {
    const original = text.slice(node.start, node.end);
    switch (node.type) {
      case "ImportDeclaration": {
        const from = `__thaw_import(${spec(node.source)})`;
        const parts = [];
        const named = [];
        for (const s of node.specifiers) {
          if (s.type === "ImportDefaultSpecifier") parts.push(`const ${s.local.name} = ${from}.default;`);
          else if (s.type === "ImportNamespaceSpecifier") parts.push(`const ${s.local.name} = ${from};`);
          else named.push(`${JSON.stringify(nameOf(s.imported))}: ${s.local.name}`);
        }
        if (named.length) parts.push(`const { ${named.join(", ")} } = ${from};`);
        if (!parts.length) parts.push(`${from};`);
        edits.push([node.start, node.end, sameLines(original, parts.join(" "))]);
        break;
      }
      case "ExportNamedDeclaration": {
        if (node.declaration) {
          const d = node.declaration;
          const names = d.type === "VariableDeclaration" ? d.declarations.flatMap((v) => bound(v.id, [])) : [d.id.name];
          for (const n of names) getters.push([n, n]);
          edits.push([node.start, d.start, ""]);
        } else if (node.source) {
          const from = `__thaw_import(${spec(node.source)})`;
          const pairs = node.specifiers.map((s) => `${JSON.stringify(nameOf(s.exported))}: ${JSON.stringify(nameOf(s.local))}`);
          edits.push([node.start, node.end, sameLines(original, `__thaw_reexport(${from}, { ${pairs.join(", ")} });`)]);
        } else {
          for (const s of node.specifiers) getters.push([nameOf(s.exported), s.local.name]);
          edits.push([node.start, node.end, sameLines(original, "")]);
        }
        break;
      }
      case "ExportAllDeclaration": {
        const from = `__thaw_import(${spec(node.source)})`;
        const code = node.exported
          ? `__thaw_reexport({ ns: ${from} }, { ${JSON.stringify(nameOf(node.exported))}: "ns" });`
          : `__thaw_reexport(${from}, null);`;
        edits.push([node.start, node.end, sameLines(original, code)]);
        break;
      }
      case "ExportDefaultDeclaration": {
        const d = node.declaration;
        if ((d.type === "FunctionDeclaration" || d.type === "ClassDeclaration") && d.id) {
          getters.push(["default", d.id.name]);
          edits.push([node.start, d.start, ""]);
        } else {
          edits.push([node.start, d.start, "__thaw_exports.default = "]);
        }
        break;
      }
    }
  }
  const warmed = warmable(ast, edits);
  // An await outside any function: the parser accepts it in a module, a function body not.
  if (containsTopLevelAwait(ast)) {
    throw new DeployError(`${path}: top-level await is not supported in a source function; await inside the handler`);
  }
  let out = text;
  for (const [start, end, code] of edits.sort((a, b) => b[0] - a[0])) {
    out = out.slice(0, start) + code + out.slice(end);
  }
  const exported = getters.map(([e, l]) => `${JSON.stringify(e)}: () => ${l}`).join(", ");
  // On the first line, so that every other line keeps its number; the warm-up's list after
  // the last.
  const warm = warmed.length ? `\n;__thaw_warm.add(() => [${warmed.join(", ")}]);` : "";
  return `"use strict"; __thaw_define({ ${exported} }); ${out}${warm}`;
}

// The guard a snapshot's warm-up finds in a function's text (see the top of this file).
const GUARD = 'if (typeof __thaw_warm === "object" && __thaw_warm.on) return;';

// How much function text a snapshot's warm-up compiles at most (characters).
const COMPILE_AHEAD_CHARS = 1 << 20;

// Whether a function can be guarded: a block body, and parameters that are plain names (a
// default or a pattern would run code before the guard).
function guardable(fn) {
  return (
    fn.body.type === "BlockStatement" &&
    fn.params.every((p) => p.type === "Identifier" || (p.type === "RestElement" && p.argument.type === "Identifier"))
  );
}

// Adds a guard to the module-level functions of `ast` and the methods of its module-level
// object literals (into `edits`), and returns the expressions that reach them at the end of
// the module: binding names, and `__thaw_exports.default` for a default export.
function warmable(ast, edits) {
  const reached = [];
  const guard = (fn) => {
    if (!guardable(fn)) return false;
    // After the body's directives ("use strict"), which must stay first.
    const directives = fn.body.body.filter((st) => st.directive !== undefined);
    const at = directives.length ? directives[directives.length - 1].end : fn.body.start + 1;
    // The `;` ends a directive written without one.
    edits.push([at, at, `; ${GUARD}`]);
    return true;
  };
  const isFunction = (node) => node && /^(FunctionExpression|ArrowFunctionExpression)$/.test(node.type);
  const methods = (object) => {
    let any = false;
    for (const p of object.properties) {
      if (p.type === "Property" && p.kind === "init" && isFunction(p.value)) any = guard(p.value) || any;
    }
    return any;
  };
  for (const top of ast.body) {
    const node = /^Export(Named|Default)Declaration$/.test(top.type) && top.declaration ? top.declaration : top;
    if (node.type === "FunctionDeclaration" && node.id) {
      if (guard(node)) reached.push(node.id.name);
    } else if (node.type === "VariableDeclaration") {
      for (const d of node.declarations) {
        if (d.id.type !== "Identifier" || !d.init) continue;
        if (isFunction(d.init) ? guard(d.init) : node.kind === "const" && d.init.type === "ObjectExpression" && methods(d.init)) {
          reached.push(d.id.name);
        }
      }
    } else if (top.type === "ExportDefaultDeclaration") {
      if (isFunction(node) || node.type === "FunctionDeclaration" ? guard(node) : node.type === "ObjectExpression" && methods(node)) {
        reached.push("__thaw_exports.default");
      }
    }
  }
  return reached;
}

// The built-ins the warm-up and the fetch listener use, taken before any program runs.
const { apply, ownKeys, getOwnPropertyDescriptor } = Reflect;
const { hasOwn } = Object;
const functionText = Function.prototype.toString;
const stringIncludes = String.prototype.includes;
const promiseResolve = Promise.resolve.bind(Promise);
const promiseReject = Promise.reject.bind(Promise);
const promiseThen = Promise.prototype.then;

// A snapshot's warm-up: calls each guarded function reached by the modules' lists with the
// guard on, compiling it without running it, until COMPILE_AHEAD_CHARS of text.
function compileAhead(lists) {
  const seen = [];
  let budget = COMPILE_AHEAD_CHARS;
  const call = (fn) => {
    if (typeof fn !== "function" || budget <= 0) return;
    for (let i = 0; i < seen.length; i++) if (seen[i] === fn) return;
    seen[seen.length] = fn;
    let text;
    try {
      text = apply(functionText, fn, []);
    } catch {
      return;
    }
    if (typeof text !== "string" || !apply(stringIncludes, text, [GUARD])) return;
    budget -= text.length;
    warm.on = true;
    try {
      apply(fn, undefined, []);
    } catch {
      // Nothing ran: a class constructor refuses the call, that is all.
    } finally {
      warm.on = false;
    }
  };
  for (let l = 0; l < lists.length; l++) {
    let values;
    try {
      values = lists[l]();
    } catch {
      continue;
    }
    for (let v = 0; v < values.length; v++) {
      const value = values[v];
      if (typeof value === "function") call(value);
      else if (value !== null && typeof value === "object") {
        // A module-level object literal: its own data properties (no getter is called).
        const keys = ownKeys(value);
        for (let k = 0; k < keys.length; k++) {
          const d = getOwnPropertyDescriptor(value, keys[k]);
          if (hasOwn(d, "value")) call(d.value);
        }
      }
    }
  }
}

// The first node anywhere in `ast` for which `test` holds, or null.
function findNode(ast, test) {
  const stack = [ast];
  while (stack.length) {
    const node = stack.pop();
    if (!node || typeof node.type !== "string") continue;
    if (test(node)) return node;
    for (const key of Object.keys(node)) {
      const v = node[key];
      if (Array.isArray(v)) stack.push(...v);
      else if (v && typeof v.type === "string") stack.push(v);
    }
  }
  return null;
}

// Whether a top-level statement awaits outside any function (a shallow walk that stops at
// function boundaries).
function containsTopLevelAwait(ast) {
  const stack = [...ast.body];
  while (stack.length) {
    const node = stack.pop();
    if (!node || typeof node.type !== "string") continue;
    if (node.type === "AwaitExpression" || (node.type === "ForOfStatement" && node.await)) return true;
    if (/Function/.test(node.type) || node.type === "ClassBody") continue;
    for (const key of Object.keys(node)) {
      const v = node[key];
      if (Array.isArray(v)) stack.push(...v);
      else if (v && typeof v.type === "string") stack.push(v);
    }
  }
  return false;
}

function prepare(files, entry) {
  const modules = {};
  const known = new Set(files.map(([p]) => p));
  if (!known.has(entry)) throw new DeployError(`the entry module ${entry} is not among the files deployed`);
  if (!JS.test(entry)) throw new DeployError(`the entry module ${entry} is not a .js or .mjs file`);
  for (const [path, text] of files) {
    if (JS.test(path)) modules[path] = rewrite(path, text);
  }
  return JSON.stringify({ entry, modules });
}

// ---- load: evaluate the program -------------------------------------------------------

let handler = null;
// The guards' switch and the modules' lists of guarded functions (kept only in a snapshot's run).
const warm = {
  on: false,
  lists: null,
  add(list) {
    if (this.lists) this.lists.push(list);
  },
};

function dirname(path) {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

function normalize(path) {
  const out = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (!out.length) return null;
      out.pop();
    } else out.push(part);
  }
  return out.join("/");
}

function evaluate(program) {
  const { entry, modules } = JSON.parse(program);
  const namespaces = new Map();
  let listener = null;
  const addEventListenerShim = (type, fn) => {
    if (type !== "fetch") throw new TypeError(`a source function listens for "fetch" only, not "${type}"`);
    listener = fn;
  };

  function resolve(from, specifier) {
    if (BUILTIN.has(specifier)) return { builtin: BUILTIN.get(specifier) };
    if (specifier.startsWith("./") || specifier.startsWith("../") || specifier.startsWith("/")) {
      const base = specifier.startsWith("/") ? specifier : `${dirname(from)}/${specifier}`;
      const path = normalize(base);
      if (path !== null) {
        for (const candidate of [path, `${path}.js`, `${path}.mjs`, `${path}/index.js`]) {
          if (Object.hasOwn(modules, candidate)) return { path: candidate };
        }
      }
      // A component project's `./thaw.js` (the template's copy of the helper), deployed as
      // source without it: the engine's own.
      if (specifier.endsWith("/thaw.js")) return { builtin: thaw };
    }
    throw new Error(
      `cannot find module "${specifier}" imported from ${from}: a source function imports files it was deployed with (relative paths) and "thaw"`,
    );
  }

  function load(path) {
    const cached = namespaces.get(path);
    if (cached) return cached;
    const exports = Object.create(null);
    Object.defineProperty(exports, Symbol.toStringTag, { value: "Module" });
    namespaces.set(path, exports);
    const define = (getters) => {
      for (const [name, get] of Object.entries(getters)) Object.defineProperty(exports, name, { get, enumerable: true });
    };
    const reexport = (from, names) => {
      const pairs = names ?? Object.fromEntries(Object.keys(from).filter((n) => n !== "default").map((n) => [n, n]));
      for (const [exported, local] of Object.entries(pairs)) {
        Object.defineProperty(exports, exported, { get: () => from[local], enumerable: true });
      }
    };
    // An indirect eval of a function expression rather than `new Function`, whose source
    // starts two lines before the body: here the body starts on the header's line, so the
    // module's frames in a stack carry the file's own line numbers.
    const body = (0, eval)(
      `(function (__thaw_import, __thaw_exports, __thaw_define, __thaw_reexport, addEventListener, __thaw_warm) {${modules[path]}\n})\n//# sourceURL=${path}`,
    );
    const importFrom = (specifier) => {
      const found = resolve(path, specifier);
      return found.builtin ?? load(found.path);
    };
    body(importFrom, exports, define, reexport, addEventListenerShim, warm);
    return exports;
  }

  const main = load(entry);
  const fetchOf = main.default?.fetch;
  if (typeof fetchOf === "function") {
    const target = main.default;
    return (request) => fetchOf.call(target, request);
  }
  if (listener) {
    const fn = listener;
    return (request) =>
      new Promise((resolve, reject) => {
        try {
          fn({ request, respondWith: (r) => Promise.resolve(r).then(resolve, reject), waitUntil() {} });
        } catch (e) {
          reject(e);
        }
      });
  }
  throw new DeployError(
    `${entry} has no handler: export one with \`export default { async fetch(request) { return new Response("hi"); } }\``,
  );
}

// The stack of `e` as the author reads it: without the engine's own frames.
function stackOf(e) {
  return String(e.stack ?? "")
    .split("\n")
    .filter((line) => line && !/@(bootstrap\.js|thaw\.js|acorn\.mjs|\/tmp\/[^:]*initializer\.js):/.test(line))
    .join("\n");
}

function describe(e) {
  if (e instanceof DeployError) return e.message;
  if (e instanceof Error) {
    const stack = stackOf(e);
    return `${e.name}: ${e.message}${stack ? `\n${stack}` : ""}`;
  }
  return `uncaught: ${String(e)}`;
}

export const program = {
  prepare(files, entry) {
    try {
      return prepare(files, entry);
    } catch (e) {
      throw describe(e);
    }
  },
  load(text) {
    try {
      handler = evaluate(text);
    } catch (e) {
      throw describe(e);
    }
    if (warm.lists) {
      try {
        compileAhead(warm.lists);
      } catch {
        // Compiling ahead is only faster: the snapshot is right without it.
      }
      warm.lists = null;
    }
  },
  // Called only in a snapshot's run, before `load`: the program's functions are then
  // compiled ahead (see the top of this file). The engine's first entry draws nothing from
  // the host; a program's top-level draw calls the host (Math.random seeds lazily), which the
  // snapshot's run refuses on its own.
  snapshotStart() {
    warm.lists = [];
  },
};

// ---- requests --------------------------------------------------------------------------

// A handler's exception is not caught: the engine logs it with its stack (thaw logs has
// it) and the request fails with a 500. The handler's own promise goes to respondWith with
// one check chained, not through an async wrapper of ours (a promise and an await more per
// request, measured in benches/results).
function checked(response) {
  if (!(response instanceof Response)) throw new TypeError("the handler's fetch did not return a Response");
  return response;
}

addEventListener("fetch", (event) => {
  if (!handler) {
    event.respondWith(new Response("function failed (no program loaded)\n", { status: 500 }));
    return;
  }
  let response;
  try {
    const result = handler(event.request);
    response = result instanceof Response ? result : apply(promiseThen, promiseResolve(result), [checked]);
  } catch (e) {
    response = promiseReject(e);
  }
  event.respondWith(response);
});

// ---- build-time warm-up ----------------------------------------------------------------

// componentize-js runs this module's top level at build time and snapshots the heap, so the
// engine starts with whatever ran here already done. SpiderMonkey compiles a function's
// bytecode on its first call (its own builtins written in JS too: Object.entries,
// Array.prototype.map, ...): without this, every instance's `load` compiled the evaluation
// path again and every deploy's `prepare` compiled acorn again. So both run once here, on a
// program that takes every path (named, default and star re-exports, a relative import and
// "thaw"). It calls no import: a host call at build time would be frozen into the snapshot.
(function warmUp() {
  const program = prepare(
    [
      ["index.js", `import * as thaw from "thaw";\nimport { g, h } from "./lib.js";\nexport const x = thaw && 1;\nexport default { async fetch(request) { return g(h(request)); } };\n`],
      ["lib.js", `export function g(r) { return r; }\nconst k = (r) => r;\nexport { k as h };\nexport * from "./more.mjs";\nexport { m as n } from "./more.mjs";\n`],
      ["more.mjs", "export let m = [1, 2].map((v) => v * 2);\nexport class C {}\n"],
    ],
    "index.js",
  );
  if (typeof evaluate(program) !== "function") throw new Error("the engine's warm-up found no handler");
})();
