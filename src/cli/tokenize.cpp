// dsv2 tokenize: prints the ids of a file's text as one JSON array (for checks against other
// tokenizers and for scripting).
#include <algorithm>
#include <chrono>
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
  bool bench = false;
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
  sub.add_flag("--bench", o->bench,
               "print single-thread encode throughput as JSON instead of ids (first pass, then best of 3)");
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
    if (o->bench) {
      using clock = std::chrono::steady_clock;
      auto t0 = clock::now();
      size_t tokens = tok.encode(text, false).size();
      double cold = std::chrono::duration<double>(clock::now() - t0).count();
      double best = cold;
      for (int r = 0; r < 3; ++r) {
        auto t1 = clock::now();
        tokens = tok.encode(text, false).size();
        best = std::min(best, std::chrono::duration<double>(clock::now() - t1).count());
      }
      out = fmt::format(
          "{{\"impl\": \"dsv2\", \"bytes\": {}, \"tokens\": {}, \"first_s\": {:.4f}, \"seconds\": {:.4f}, "
          "\"first_mb_per_s\": {:.2f}, \"mb_per_s\": {:.2f}}}\n",
          text.size(), tokens, cold, best, text.size() / 1e6 / cold, text.size() / 1e6 / best);
    } else if (o->jsonl) {
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
