// Spends its time in hotLoop, a JavaScript function V8 compiles; with --perf-basic-prof,
// node names it in /tmp/perf-<pid>.map. Runs for the seconds given (default 3).
'use strict';
function hotLoop(n) {
  let x = 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
  }
  return x;
}
const end = Date.now() + 1000 * Number(process.argv[2] || 3);
let sink = 0;
while (Date.now() < end) {
  sink ^= hotLoop(1000000);
}
if (sink === 42) console.log('unlikely');
