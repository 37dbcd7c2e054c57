// Runs circuit-tracer's graph viewer data step on one graph file, outside a browser, and prints what
// the viewer then shows: node ./viewer_data.js ASSETS NODE_MODULES GRAPH.json [QUERY] [THRESHOLD]
//   ASSETS        circuit_tracer/frontend/assets of the circuit-tracer wheel (util.js, util-cg.js)
//   NODE_MODULES  where npm installed d3 and d3-jetpack (the viewer's d3 and jetpack's nestBy)
//   QUERY         the page URL's query string (e.g. "?logitDiff=a__vs__b"), "" for none
//   THRESHOLD     visState.pruningThreshold, as index.html sets it from the index's node_threshold
// The viewer's own files are evaluated as they are, in a context with the browser globals they use;
// each node is reported with the label the feature panel prints (init-cg-feature-detail.js).
const fs = require('fs')
const path = require('path')
const vm = require('vm')

const [assets, modules, graphPath, query = '', threshold = ''] = process.argv.slice(2)
const run = (ctx, file) => vm.runInContext(fs.readFileSync(file, 'utf8'), ctx, {filename: file})

function context() {
  const ctx = {console, URL, URLSearchParams, setTimeout, clearTimeout, Promise}
  ctx.window = ctx
  ctx.self = ctx
  ctx.globalThis = ctx
  ctx.location = ctx.window.location = 'http://localhost:8032/index.html' + query
  ctx.history = {replaceState: () => {}}
  return vm.createContext(ctx)
}

async function main() {
  const jet = context()
  run(jet, path.join(modules, 'd3-jetpack', 'build', 'd3v7+jetpack.js'))
  const ctx = context()
  run(ctx, path.join(modules, 'd3', 'dist', 'd3.js'))
  ctx.d3.nestBy = jet.d3.nestBy
  run(ctx, path.join(assets, 'util.js'))
  run(ctx, path.join(assets, 'attribution_graph', 'util-cg.js'))
  const data = JSON.parse(fs.readFileSync(graphPath, 'utf8'))
  const visState = {pinnedIds: [], graphSchemaVersion: data.metadata?.schema_version || 0}
  if (threshold) visState.pruningThreshold = threshold
  const out = await ctx.utilCg.formatData(data, visState)
  const label = d => {
    const featIdx = visState.graphSchemaVersion > 0 ? ctx.util.cantorUnpair(d.featureIndex)[1] : d.featureIndex
    return `${ctx.utilCg.layerLocationLabel(d.layer, d.probe_location_idx)}/${featIdx}`
  }
  const nodes = out.nodes.map(d => ({
    node_id: d.node_id, feature_type: d.feature_type, layer: String(d.layer), ctx_idx: d.ctx_idx,
    unpaired: d.feature_type == 'cross layer transcoder' ? ctx.util.cantorUnpair(d.featureIndex) : null,
    label: label(d), clerp: d.clerp, logitToken: d.logitToken ?? null, logitPct: d.logitPct ?? null,
    virtual: !!d.isJsVirtual,
  }))
  process.stdout.write(JSON.stringify({nodes, n_links: out.links.length, n_features: out.features.length}))
}

main().catch(e => { console.error(String(e && e.stack || e)); process.exit(1) })
