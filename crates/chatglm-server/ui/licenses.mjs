// Regenerates LICENSES-THIRD-PARTY.md from the installed packages:
//   npm ci && node licenses.mjs
import { readFileSync, writeFileSync } from 'node:fs';

const bundled = [
  ['marked', 'Markdown parser', 'LICENSE'],
  ['highlight.js', 'code highlighting (core + 16 languages)', 'LICENSE'],
  ['katex', 'LaTeX math, its CSS and woff2 fonts (inlined)', 'LICENSE'],
  ['dompurify', 'HTML sanitizer (used under Apache-2.0)', 'LICENSE'],
];
const buildOnly = [['esbuild', 'bundler (build time only, not in the page)', 'LICENSE.md']];

const pkg = (name) => JSON.parse(readFileSync(`node_modules/${name}/package.json`, 'utf8'));
let out = `# Third-party software in the web chat page

\`dist/index.html\` (embedded in the \`chatglm\` binary) bundles these npm packages, at the
versions pinned in \`package-lock.json\`. Their licence notices follow. Regenerate this file
with \`npm ci && node licenses.mjs\`.

| package | version | licence | used for |
|---|---|---|---|
`;
for (const [name, what] of [...bundled, ...buildOnly]) {
  const p = pkg(name);
  out += `| \`${name}\` (npm) | ${p.version} | ${p.license} | ${what} |\n`;
}
out += `
The page's own code (\`src/\`) is part of ChatGLM.rs (Apache-2.0). The CJK text uses the
system's fonts; no font other than KaTeX's is bundled.
`;
for (const [name, , file] of bundled) {
  const p = pkg(name);
  const text = readFileSync(`node_modules/${name}/${file}`, 'utf8').trim();
  out += `\n## ${name} ${p.version}\n\n`;
  if (name === 'dompurify') out += '(c) Cure53 and other contributors. Dual-licensed Apache-2.0 / MPL-2.0; used here under the Apache License 2.0:\n\n';
  out += '```text\n' + text + '\n```\n';
}
writeFileSync('LICENSES-THIRD-PARTY.md', out);
console.log('wrote LICENSES-THIRD-PARTY.md');
