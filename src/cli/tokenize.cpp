// dsv2 tokenize: prints the ids of a file's text as one JSON array (for checks against other
// tokenizers and for scripting).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/error.h"
#include "io/model_path.h"
#include "tokenizer/tokenizer.h"

namespace {

struct TokenizeOptions {
  std::string model;
  std::string file;
  bool no_special = false;
  bool jsonl = false;
};

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  return out;
}

std::function<int()> setup(CLI::App& sub) {
  auto o = std::make_shared<TokenizeOptions>();
  sub.add_option("--model,-m", o->model, "model folder (tokenizer.json [+ tokenizer_config.json]) or org/name")
      ->required();
  sub.add_option("--file,-f", o->file, "text file to tokenize ('-' for stdin)")->required();
  sub.add_flag("--no-special", o->no_special, "add no BOS/EOS");
  sub.add_flag("--jsonl", o->jsonl, "the file holds one JSON string per line: print one array per line");
  return [o]() {
    auto dir = dsv2::resolve_model_path(o->model);
    auto tok = dsv2::Tokenizer::from_folder(dir);
    std::string text;
    if (o->file == "-") {
      text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    } else {
      std::ifstream f(o->file, std::ios::binary);
      if (!f) dsv2::fail("cannot read --file {}", o->file);
      std::ostringstream ss;
      ss << f.rdbuf();
      text = ss.str();
    }
    std::string out;
    if (o->jsonl) {
      std::istringstream lines(text);
      std::string line;
      for (size_t n = 1; std::getline(lines, line); ++n) {
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          dsv2::fail("--file {} line {}: invalid JSON: {}", o->file, n, e.what());
        }
        if (!j.is_string()) dsv2::fail("--file {} line {}: expected a JSON string", o->file, n);
        out += ids_json(tok.encode(j.get<std::string>(), !o->no_special));
      }
    } else {
      out = ids_json(tok.encode(text, !o->no_special));
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  };
}

}  // namespace

DSV2_COMMAND("tokenize", "print the token ids of a text file as a JSON array", setup);
