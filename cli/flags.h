// Command-line flags for nextserve's executables: `--name value` or `--name=value`, dashes in
// names, unknown flags and bad values rejected with a message naming the flag.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace nextserve::cli {

class Flags {
 public:
  explicit Flags(std::string usage) : usage_(std::move(usage)) {}

  // Declare before Parse; the pointee holds the default and receives the value.
  void String(const std::string& name, std::string* value, std::string help);
  void Int(const std::string& name, int64_t* value, std::string help);
  void Bool(const std::string& name, bool* value, std::string help);  // present = true

  // argv[0] is skipped. `--help` gives a NotFound status whose message is the help text.
  absl::Status Parse(int argc, char** argv);
  std::string Help() const;
  const std::vector<std::string>& positional() const { return positional_; }

  // Prints "error: ..." plus usage (exit code 2), or the help (exit code 0).
  static int Report(const absl::Status& status, const Flags& flags);

 private:
  enum class Kind { kString, kInt, kBool };
  struct Flag {
    Kind kind;
    void* target;
    std::string help;
  };
  std::string usage_;
  std::map<std::string, Flag> flags_;
  std::vector<std::string> positional_;
};

}  // namespace nextserve::cli
