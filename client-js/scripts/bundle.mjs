// The single-file browser builds, minified ESM that a plain <script type="module"> can
// import: dist/rtc-client.browser.js (the JSON mode, no dependency) and
// dist/rtc-client-proto.browser.js (the same with `protoCodec` and the protobuf
// runtime, for the binary mode). Prints their sizes, raw and gzipped.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";

const builds = [
  { out: "dist/rtc-client.browser.js", source: 'export * from "./src/index.ts";' },
  { out: "dist/rtc-client-proto.browser.js", source: 'export * from "./src/index.ts"; export { protoCodec } from "./src/proto.ts";' },
];
for (const { out, source } of builds) {
  await build({
    stdin: { contents: source, resolveDir: ".", loader: "ts" },
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2020",
    outfile: out,
    legalComments: "none",
    banner: { js: "// rtc-client browser build, generated from client-js/ by `npm run build`: do not edit." },
  });
  const bytes = readFileSync(out);
  console.log(`${out}: ${bytes.length} bytes, ${gzipSync(bytes, { level: 9 }).length} gzipped`);
}
