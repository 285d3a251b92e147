// Renders every (template, conversation) pair of tests/data/chat with @huggingface/jinja (the
// Jinja engine of transformers.js, installed in tests/npm) and prints the results as JSON.
// usage: node tools/chat/render_node.mjs [data_dir] > tests/data/chat/expected_node.json
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const require = createRequire(join(root, "tests", "npm", "package.json"));
const { Template } = require("@huggingface/jinja");
const version = JSON.parse(readFileSync(join(root, "tests", "npm", "node_modules", "@huggingface", "jinja", "package.json"), "utf8")).version;

const data = process.argv[2] ?? join(root, "tests", "data", "chat");
const cases = JSON.parse(readFileSync(join(data, "conversations.json"), "utf8"));
const templates = new Map();
const results = {};
for (const c of cases) {
  for (const name of c.templates) {
    if (!templates.has(name)) {
      templates.set(name, new Template(readFileSync(join(data, "templates", name + ".jinja"), "utf8")));
    }
    const ctx = {
      messages: c.messages, add_generation_prompt: c.add_generation_prompt,
      bos_token: c.bos_token, eos_token: c.eos_token, tools: c.tools ?? null,
    };
    try {
      results[`${name}/${c.name}`] = { text: templates.get(name).render(ctx) };
    } catch (e) {
      results[`${name}/${c.name}`] = { error: String(e.message ?? e) };
    }
  }
}
// Keys sorted like the Python driver's output so that the two files diff cleanly.
const sorted = Object.fromEntries(Object.keys(results).sort().map((k) => [k, results[k]]));
process.stdout.write(JSON.stringify({ engine: `@huggingface/jinja ${version}`, results: sorted }, null, 1) + "\n");
