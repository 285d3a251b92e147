// Reference Unicode normalization (Node's String.prototype.normalize, ICU).
// usage: node normalize.mjs FORM FILE   (FORM: NFC, NFKC, NFD, NFKD) -> the normalized text on stdout
import { readFileSync } from "node:fs";
const [form, file] = process.argv.slice(2);
process.stdout.write(readFileSync(file, "utf8").normalize(form));
