// Validate prometheus-operator objects (ServiceMonitor, PrometheusRule)
// against the CRD models of @kubernetes-models/prometheus-operator.
//
// Usage: node validate.mjs OBJECTS.json [MORE.json ...]
//   each file: a JSON array of rendered Kubernetes objects (one type check
//   for all files, because starting the TypeScript compiler dominates).
//   env CRD_VALIDATE_MODULES: the folder holding node_modules (npm ci of this
//   folder's package.json; kept in deploy/ci/.cache so the clone stays clean).
//
// Two passes, because each catches what the other cannot:
//  1. the models' own validators (generated from the CRD OpenAPI schemas):
//     required fields, types, enums and patterns such as durations;
//  2. a TypeScript type check of each object as an object literal typed with
//     the model's interface: excess-property checks reject unknown or
//     misspelt fields (the CRD schemas allow them, the API server prunes
//     them silently, so a typo like `scrapeTimout` would otherwise pass).
// A kind this script has no model for is an error, never a skip.
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": "ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule": "PrometheusRule",
};
const PKG = "@kubernetes-models/prometheus-operator";

// Objects carry the file they came from: base and overlay renders share names.
function describe(obj, i) {
  const name = obj?.metadata?.name ?? `#${i}`;
  return `${obj?.__source ?? ""}: ${obj?.kind}/${name} (${obj?.apiVersion})`;
}

function strip(obj) {
  const { __source, ...rest } = obj;
  return rest;
}

async function runtimePass(root, objects) {
  const errors = [];
  const module = await import(
    pathToFileURL(join(root, "node_modules", PKG, "monitoring.coreos.com", "v1", "index.js")).href
  );
  objects.forEach((obj, i) => {
    const modelName = MODELS[`${obj.apiVersion}/${obj.kind}`];
    if (!modelName) {
      errors.push(`${describe(obj, i)}: no CRD model for this kind`);
      return;
    }
    try {
      new module[modelName](strip(obj)).validate();
    } catch (err) {
      errors.push(`${describe(obj, i)}: ${err.message}`);
    }
  });
  return errors;
}

function typePass(root, objects) {
  const require = createRequire(join(root, "package.json"));
  const ts = require("typescript");
  const dir = mkdtempSync(join(root, "typecheck-"));
  try {
    const lines = [];
    const owners = [];
    const used = new Set();
    objects.forEach((obj, i) => {
      const modelName = MODELS[`${obj.apiVersion}/${obj.kind}`];
      if (!modelName) return;
      used.add(modelName);
      const start = lines.length;
      lines.push(`export const o${i}: I${modelName} = ${JSON.stringify(strip(obj), null, 2)};`);
      owners.push({ first: start, obj, i });
    });
    const imports = [...used].map(
      (m) => `import type { I${m} } from "${PKG}/monitoring.coreos.com/v1/${m}";`,
    );
    // Map generated line numbers back to objects for readable messages.
    const text = imports.concat(lines).join("\n");
    const file = join(dir, "objects.ts");
    writeFileSync(file, text);
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      skipLibCheck: true,
      lib: ["lib.es2022.d.ts"], // no DOM typings: faster, and nothing here runs in a browser
      typeRoots: [],
      types: [],
    });
    const starts = [];
    let offset = imports.join("\n").length + 1;
    for (const line of lines) {
      starts.push(offset);
      offset += line.length + 1;
    }
    return ts.getPreEmitDiagnostics(program).map((d) => {
      const message = ts.flattenDiagnosticMessageText(d.messageText, "\n");
      if (d.file === undefined || d.start === undefined) return message;
      let k = starts.length - 1;
      while (k > 0 && starts[k] > d.start) k--;
      const owner = owners[k];
      const { line } = d.file.getLineAndCharacterOfPosition(d.start);
      return `${owner ? describe(owner.obj, owner.i) : "?"}: line ${line + 1} of the generated check: ${message}`;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const paths = process.argv.slice(2);
  const root = process.env.CRD_VALIDATE_MODULES;
  if (paths.length === 0 || !root) {
    console.error("usage: CRD_VALIDATE_MODULES=DIR node validate.mjs OBJECTS.json [MORE.json ...]");
    process.exit(2);
  }
  const objects = [];
  for (const path of paths) {
    const list = JSON.parse(readFileSync(path, "utf8"));
    if (!Array.isArray(list) || list.length === 0) {
      console.error(`${path}: expected a non-empty JSON array of objects`);
      process.exit(2);
    }
    objects.push(...list.map((obj) => ({ ...obj, __source: basename(path) })));
  }
  const errors = [...(await runtimePass(root, objects)), ...typePass(root, objects)];
  for (const e of errors) console.error(`INVALID ${e}`);
  for (const [i, obj] of objects.entries()) {
    if (!errors.some((e) => e.startsWith(describe(obj, i)))) console.log(`ok ${describe(obj, i)}`);
  }
  process.exit(errors.length ? 1 : 0);
}

await main();
