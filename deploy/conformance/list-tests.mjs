// Prints the tests of an http-cache-tests package as JSON, for `cargo xtask cache-tests` to judge
// a run's results with: `node list-tests.mjs PACKAGE_DIR`. The suite's cli.mjs runs the
// surrogate-control suite besides those of tests/index.mjs, so it is listed too.
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const dir = path.resolve(process.argv[2])
const load = async file => (await import(pathToFileURL(path.join(dir, 'tests', file)).href)).default
const suites = [...await load('index.mjs'), await load('surrogate-control.mjs')]
const tests = suites.flatMap(suite => suite.tests.map(test => ({
  id: test.id,
  suite: suite.id,
  name: test.name,
  // As the suite's lib/display.mjs reads them: no kind is `required`.
  kind: test.kind ?? 'required',
  depends_on: test.depends_on ?? []
})))
process.stdout.write(JSON.stringify(tests))
