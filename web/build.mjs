// Bundles the two pages for the browser (`just web`, through build.sh), each into one script,
// one stylesheet and the page:
//   dist/storefront/  served by the gateway at `/` when `[http] site_dir` names it;
//   dist/console/     served by shop-console (`--site-dir`).
// Prints the gzipped size of each file.
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";

const PAGES = [
  { name: "storefront", script: "app.js" },
  { name: "console", script: "console.js" },
];

for (const { name, script } of PAGES) {
  const out = `dist/${name}`;
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  await esbuild.build({
    entryPoints: [`src/${name}/main.ts`],
    bundle: true,
    minify: true,
    format: "esm",
    target: ["chrome120", "firefox120", "safari17"],
    outfile: `${out}/${script}`,
    legalComments: "none",
    logLevel: "warning",
  });
  copyFileSync(`src/${name}/index.html`, `${out}/index.html`);
  copyFileSync(`src/${name}/style.css`, `${out}/style.css`);
  copyFileSync("src/common/favicon.svg", `${out}/favicon.svg`);
  for (const file of ["index.html", "style.css", script, "favicon.svg"]) {
    const bytes = readFileSync(`${out}/${file}`);
    console.log(`web: ${out}/${file}: ${bytes.length} bytes, ${gzipSync(bytes).length} gzipped`);
  }
}
