// The single-file browser build: dist/rtc-client.browser.js, minified ESM that a plain
// <script type="module"> can import. Prints its size, raw and gzipped.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";

const out = "dist/rtc-client.browser.js";
await build({
  entryPoints: ["src/index.ts"],
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
