// Parse and analyse KQL queries with Microsoft's Kusto.Language (npm @kusto/language-service-next).
// stdin: {"schema": {table: "(col:type, ...)"}, "queries": {name: text}}; stdout: {name: [diagnostic, ...]}.
// Run by tests/infra/test_kql_syntax.py with NODE_PATH pointing at the package's install.
global.Bridge = require("@kusto/language-service-next/bridge.js");
require("@kusto/language-service-next/Kusto.Language.Bridge.js");

const K = Kusto.Language;
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const tables = Object.entries(input.schema).map(([name, columns]) => K.Symbols.TableSymbol.From(columns).WithName(name));
const globals = K.GlobalState.Default.WithDatabase(new K.Symbols.DatabaseSymbol.ctor("appinsights", tables));
const found = {};
for (const [name, text] of Object.entries(input.queries)) {
  const diagnostics = K.KustoCode.ParseAndAnalyze(text, globals).GetDiagnostics();
  found[name] = [];
  for (let i = 0; i < diagnostics.Count; i++) {
    const d = diagnostics.getItem(i);
    found[name].push(`${d.Severity} at ${d.Start}: ${d.Message}`);
  }
}
process.stdout.write(JSON.stringify(found));
