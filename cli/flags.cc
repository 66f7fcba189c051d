#include "cli/flags.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace nextserve::cli {

void Flags::String(const std::string& name, std::string* value, std::string help) {
  flags_[name] = {Kind::kString, value, std::move(help)};
}
void Flags::Int(const std::string& name, int64_t* value, std::string help) {
  flags_[name] = {Kind::kInt, value, std::move(help)};
}
void Flags::Bool(const std::string& name, bool* value, std::string help) {
  flags_[name] = {Kind::kBool, value, std::move(help)};
}

absl::Status Flags::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return absl::NotFoundError(Help());
    if (arg.rfind("--", 0) != 0) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = flags_.find(name);
    if (it == flags_.end())
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    Flag& flag = it->second;
    if (flag.kind == Kind::kBool) {
      if (has_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " takes no value (or =true/=false)"));
      }
      *static_cast<bool*>(flag.target) = !has_value || value == "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc)
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    if (flag.kind == Kind::kString) {
      *static_cast<std::string*>(flag.target) = value;
    } else if (!absl::SimpleAtoi(value, static_cast<int64_t*>(flag.target))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, ": '", value, "' is not an integer"));
    }
  }
  return absl::OkStatus();
}

std::string Flags::Help() const {
  std::string out = absl::StrCat("usage: ", usage_, "\n");
  for (const auto& [name, flag] : flags_)
    absl::StrAppend(&out, "  --", name, "  ", flag.help, "\n");
  return out;
}

int Flags::Report(const absl::Status& status, const Flags& flags) {
  if (absl::IsNotFound(status)) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  std::fprintf(stderr, "error: %s\n%s", std::string(status.message()).c_str(),
               flags.Help().c_str());
  return 2;
}

}  // namespace nextserve::cli
