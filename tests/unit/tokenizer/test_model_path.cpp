// resolve_model_path: folders, Hugging Face names in a fake cache laid out like the real one, and
// errors that name where the lookup went.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "io/model_path.h"

namespace fs = std::filesystem;

namespace {

struct EnvGuard {
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  void set(const char* k, const std::optional<std::string>& v) {
    const char* old = std::getenv(k);
    saved.push_back({k, old ? std::optional<std::string>(old) : std::nullopt});
    if (v)
      setenv(k, v->c_str(), 1);
    else
      unsetenv(k);
  }
  ~EnvGuard() {
    for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
      if (it->second)
        setenv(it->first.c_str(), it->second->c_str(), 1);
      else
        unsetenv(it->first.c_str());
    }
  }
};

fs::path make_cache(const fs::path& root, const std::string& repo, const std::string& hash) {
  fs::path r = root / repo;
  fs::create_directories(r / "refs");
  fs::create_directories(r / "snapshots" / hash);
  std::ofstream(r / "refs" / "main") << hash << "\n";
  std::ofstream(r / "snapshots" / hash / "tokenizer.json") << "{}";
  return r / "snapshots" / hash;
}

std::string error_of(const std::string& arg) {
  try {
    dsv2::resolve_model_path(arg);
  } catch (const dsv2::Error& e) {
    return e.what();
  }
  return "";
}

class ResolveModelPath : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fs::temp_directory_path() / ("dsv2-model-path-" + std::to_string(::getpid()));
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override { fs::remove_all(tmp_); }
  fs::path tmp_;
};

}  // namespace

TEST_F(ResolveModelPath, FolderIsTakenAsIs) {
  EXPECT_EQ(dsv2::resolve_model_path(tmp_.string()), tmp_);
  std::ofstream(tmp_ / "file") << "x";
  EXPECT_NE(error_of((tmp_ / "file").string()).find("not a folder"), std::string::npos);
}

TEST_F(ResolveModelPath, HubCacheVariablesInOrder) {
  fs::path hub = tmp_ / "hubcache", home = tmp_ / "hfhome", user = tmp_ / "user";
  fs::path a = make_cache(hub, "models--deepseek-ai--DeepSeek-V2-Lite-Chat", "aaaa1111");
  fs::path b = make_cache(home / "hub", "models--deepseek-ai--DeepSeek-V2-Lite-Chat", "bbbb2222");
  fs::path c = make_cache(user / ".cache/huggingface/hub", "models--deepseek-ai--DeepSeek-V2-Lite-Chat", "cccc3333");
  EnvGuard env;
  env.set("HF_HUB_CACHE", hub.string());
  env.set("HF_HOME", home.string());
  env.set("HOME", user.string());
  EXPECT_EQ(dsv2::resolve_model_path("deepseek-ai/DeepSeek-V2-Lite-Chat"), a);
  env.set("HF_HUB_CACHE", std::nullopt);
  EXPECT_EQ(dsv2::resolve_model_path("deepseek-ai/DeepSeek-V2-Lite-Chat"), b);
  env.set("HF_HOME", std::nullopt);
  EXPECT_EQ(dsv2::resolve_model_path("deepseek-ai/DeepSeek-V2-Lite-Chat"), c);
}

TEST_F(ResolveModelPath, ErrorsNameWhereItLooked) {
  EnvGuard env;
  env.set("HF_HUB_CACHE", (tmp_ / "hub").string());
  std::string e = error_of("deepseek-ai/DeepSeek-V2-Lite-Chat");
  EXPECT_NE(e.find((tmp_ / "hub" / "models--deepseek-ai--DeepSeek-V2-Lite-Chat" / "refs" / "main").string()),
            std::string::npos)
      << e;
  // refs/main names a snapshot that is not there.
  fs::path r = tmp_ / "hub" / "models--org--name";
  fs::create_directories(r / "refs");
  std::ofstream(r / "refs" / "main") << "deadbeef";
  e = error_of("org/name");
  EXPECT_NE(e.find("deadbeef"), std::string::npos) << e;
  EXPECT_NE(e.find("snapshots"), std::string::npos) << e;
  EXPECT_NE(error_of("not a name").find("not a folder"), std::string::npos);
  EXPECT_NE(error_of("").find("empty"), std::string::npos);
}
