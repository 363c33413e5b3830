// Validates prometheus-operator custom resources (PodMonitor, ServiceMonitor, PrometheusRule, ...) against the
// CRDs' own OpenAPI schemas, as compiled into validators by the npm package @kubernetes-models/prometheus-operator.
// Usage: node validate_crds.mjs <node_modules dir> < documents.json   (a JSON array of objects)
// Prints a JSON array: [{kind, name, ok, errors}] in input order; exit 0 (the caller judges the results).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules = process.argv[2];
const documents = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of documents) {
  const [group, version] = String(doc.apiVersion || "").split("/");
  const name = (doc.metadata || {}).name;
  if (group !== "monitoring.coreos.com" || !version) {
    results.push({ kind: doc.kind, name, ok: false, errors: [`not a monitoring.coreos.com resource: ${doc.apiVersion}`] });
    continue;
  }
  const versionPart = version.charAt(0).toUpperCase() + version.slice(1);
  const file = path.join(modules, "@kubernetes-models", "prometheus-operator", "_schemas",
    `ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoring${versionPart}${doc.kind}.js`);
  let validate;
  try {
    ({ validate } = await import(pathToFileURL(file).href));
  } catch (error) {
    results.push({ kind: doc.kind, name, ok: false, errors: [`no schema for ${doc.apiVersion} ${doc.kind}: ${error.message}`] });
    continue;
  }
  const ok = validate(doc);
  const errors = ok ? [] : (validate.errors || []).map((e) => `${e.instancePath || "/"} ${e.keyword}: ${JSON.stringify(e.params)}`);
  results.push({ kind: doc.kind, name, ok, errors });
}
process.stdout.write(JSON.stringify(results));
