// The drivers' common main: read {"ops": [op, ...]} from stdin, run every op at once
// (Promise.all) through `run`, write {"results": [result, ...]} in op order as one JSON
// document to stdout, and exit.
export async function runOps(run) {
  let input = '';
  for await (const piece of process.stdin) input += piece;
  const { ops } = JSON.parse(input);
  const results = await Promise.all(ops.map(run));
  process.stdout.write(JSON.stringify({ results }) + '\n');
  // Agents with open keep-alive sockets would hold the process for their idle timeout.
  process.exit(0);
}
