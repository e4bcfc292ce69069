// Build of the browser and phone app: esbuild bundles src/upload.js (board.js and phone.js
// split out, loaded on demand), content-hashed names, minified; each file gets its gzip and
// brotli copies; manifest.json maps entry names to hashed names. Output: api/web/static/dist,
// committed, so a Python install needs no Node. Run: npm ci && npm run build.
import * as esbuild from "esbuild";
import { readFileSync, writeFileSync, rmSync, mkdirSync, readdirSync, copyFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";
import path from "node:path";

const here = path.dirname(new URL(import.meta.url).pathname);
const out = path.resolve(here, "../api/web/static/dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const result = await esbuild.build({
  entryPoints: { upload: path.join(here, "src/upload.js"), "upload-style": path.join(here, "src/upload.css") },
  bundle: true, splitting: true, format: "esm", minify: true, target: ["es2020"],
  outdir: out, entryNames: "[name]-[hash]", chunkNames: "[name]-[hash]", assetNames: "[name]-[hash]",
  metafile: true, legalComments: "none", logLevel: "warning",
});

const manifest = {};
for (const [file, info] of Object.entries(result.metafile.outputs)) {
  const name = path.basename(file);
  if (info.entryPoint && info.entryPoint.endsWith("upload.js")) manifest["upload.js"] = name;
  else if (info.entryPoint && info.entryPoint.endsWith("upload.css")) manifest["upload.css"] = name;
  else if (name.startsWith("board-")) manifest["board.js"] = name;
  else if (name.startsWith("phone-")) manifest["phone.js"] = name;
  else manifest[name] = name; // a shared chunk
}
// What the upload page loads on first load (its static imports): preloaded by the page, and
// counted by the size budget (tests/unit/web/test_assets.py).
const entry = Object.entries(result.metafile.outputs).find(([, info]) => info.entryPoint && info.entryPoint.endsWith("upload.js"));
const firstLoad = entry[1].imports.filter((i) => i.kind === "import-statement").map((i) => path.basename(i.path));
// The icon: copied under a content hash like the rest.
const icon = readFileSync(path.join(here, "src/icon.svg"));
const iconName = `icon-${createHash("sha256").update(icon).digest("hex").slice(0, 8).toUpperCase()}.svg`;
writeFileSync(path.join(out, iconName), icon);
manifest["icon.svg"] = iconName;
// An empty JS file esbuild writes for a CSS-only entry is not needed.
for (const name of readdirSync(out)) {
  if (name.startsWith("upload-style-") && name.endsWith(".js")) rmSync(path.join(out, name));
}
writeFileSync(path.join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
writeFileSync(path.join(out, "first-load.json"), JSON.stringify(firstLoad.sort(), null, 2) + "\n");

for (const name of readdirSync(out)) {
  if (name.endsWith(".json")) continue;
  const body = readFileSync(path.join(out, name));
  writeFileSync(path.join(out, `${name}.gz`), gzipSync(body, { level: 9 }));
  writeFileSync(path.join(out, `${name}.br`), brotliCompressSync(body, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: body.length },
  }));
}
console.log(JSON.stringify(manifest));
