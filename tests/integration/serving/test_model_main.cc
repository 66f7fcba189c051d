// nextserve-test-model --out DIR: writes the serving tests' model (cluster.h) for tests outside C++
// (the Python SDK's), so that every language's tests serve the same model.
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "cli/flags.h"
#include "tests/integration/serving/cluster.h"

int main(int argc, char** argv) {
  std::string out;
  nextserve::cli::Flags flags("nextserve-test-model --out DIR");
  flags.String("out", &out,
               "directory to write config.json, model.safetensors, tokenizer.json into");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok())
    return nextserve::cli::Flags::Report(s, flags);
  if (out.empty()) {
    return nextserve::cli::Flags::Report(absl::InvalidArgumentError("--out is required"), flags);
  }
  if (absl::Status s = nextserve::testing::WriteTestModel(out); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
