#!/usr/bin/env node
// Checks Forge app manifests (manifest.yml files) the way `forge deploy` would,
// without the Forge CLI or a network:
//
// 1. the JSON schema that @forge/manifest publishes (out/schema/manifest-schema.json),
//    with Ajv, independently of the package's own code;
// 2. the package's validation processors: the full one `forge lint` runs
//    (references between modules, remotes, scopes for tokens, runtime, ...)
//    and the one that checks each trigger event's scopes.
//
//   node validate.js FILE...
//
// Prints "ok FILE" or "invalid FILE" with one line per problem. Exit code: 0
// when every file is valid, 1 when one is not, 2 when the check itself failed.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

// Loaded in main(), so that a missing `npm ci` exits 2 like any failed check.
let Ajv, addFormats, YAML, forge;

function loadSchema() {
  // The package's "exports" hide the file from require(); read it from disk.
  const out = path.dirname(require.resolve('@forge/manifest'));
  const file = path.join(out, 'schema', 'manifest-schema.json');
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function schemaProblems(validate, text) {
  const doc = YAML.parseDocument(text);
  if (doc.errors.length > 0) {
    return doc.errors.map((e) => `yaml: ${e.message}`);
  }
  const manifest = doc.toJS();
  if (validate(manifest)) {
    return [];
  }
  return validate.errors.map(
    (e) => `schema: ${e.instancePath || '/'} ${e.message}${e.params ? ' ' + JSON.stringify(e.params) : ''}`
  );
}

async function lintProblems(processors, file) {
  const problems = [];
  const warnings = [];
  for (const processor of processors) {
    const result = await processor.process(file);
    for (const e of result.errors || []) {
      const where = e.line ? ` (line ${e.line})` : '';
      const line = `lint ${e.reference || ''}: ${e.message}${where}`;
      (e.level === 'error' ? problems : warnings).push(line);
    }
    if (!result.success && (result.errors || []).every((e) => e.level !== 'error')) {
      problems.push(`lint: ${processor.constructor.name} failed without an error message`);
    }
  }
  return { problems: [...new Set(problems)], warnings: [...new Set(warnings)] };
}

async function main(files) {
  if (files.length === 0) {
    console.error('usage: node validate.js FILE...');
    return 2;
  }
  Ajv = require('ajv');
  addFormats = require('ajv-formats');
  YAML = require('yaml');
  forge = require('@forge/manifest');
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats(ajv);
  const validate = ajv.compile(loadSchema());
  // Each compiles the schema once, when made: make them once for all files.
  const processors = [
    new forge.FullValidationProcessor({}),
    new forge.ProductTriggerValidationProcessor(),
  ];
  let status = 0;
  for (const file of files) {
    const full = path.resolve(file);
    const text = fs.readFileSync(full, 'utf8');
    const problems = schemaProblems(validate, text);
    const lint = await lintProblems(processors, full);
    problems.push(...lint.problems);
    for (const w of lint.warnings) {
      console.log(`warning ${file}: ${w}`);
    }
    if (problems.length === 0) {
      console.log(`ok ${file}`);
    } else {
      status = 1;
      console.log(`invalid ${file}`);
      for (const p of problems) {
        console.log(`  ${p}`);
      }
    }
  }
  return status;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`validate.js: ${err && err.stack ? err.stack : err}`);
    process.exitCode = 2;
  }
);
