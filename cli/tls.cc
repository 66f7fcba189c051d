#include "cli/tls.h"

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace nextserve::cli {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const std::string& flag,
                                    const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", path, ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  const std::string pem = text.str();
  if (!absl::StrContains(pem, "-----BEGIN")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", path, ": not a PEM file (expected ", what, ")"));
  }
  return pem;
}

struct Pems {
  std::string cert, key, ca;
};

absl::StatusOr<Pems> Read(const TlsFiles& f) {
  if (f.cert.empty() != f.key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", f.flag_prefix, "-cert and --",
                                                   f.flag_prefix, "-key go together: give both"));
  }
  Pems p;
  if (!f.cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(f.cert, f.flag_prefix + "-cert", "a certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(f.key, f.flag_prefix + "-key", "a private key");
    if (!key.ok()) return key.status();
    p.cert = *std::move(cert);
    p.key = *std::move(key);
  }
  if (!f.ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(f.ca, f.flag_prefix + "-ca", "CA certificates");
    if (!ca.ok()) return ca.status();
    p.ca = *std::move(ca);
  }
  return p;
}

}  // namespace

void AddTlsFlags(Flags& flags, const std::string& prefix, const std::string& role, TlsFiles* out) {
  out->flag_prefix = prefix;
  flags.String(prefix + "-cert", &out->cert, "PEM certificate chain for " + role);
  flags.String(prefix + "-key", &out->key, "PEM private key for " + role);
  flags.String(prefix + "-ca", &out->ca, "PEM CA certificates that verify the peer of " + role);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFiles& files) {
  if (!files.any()) return grpc::InsecureServerCredentials();
  if (files.cert.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", files.flag_prefix, "-ca needs --", files.flag_prefix, "-cert and --",
                     files.flag_prefix, "-key (a server's own pair)"));
  }
  absl::StatusOr<Pems> p = Read(files);
  if (!p.ok()) return p.status();
  grpc::SslServerCredentialsOptions options(
      p->ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = p->ca;
  options.pem_key_cert_pairs.push_back({p->key, p->cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const TlsFiles& files) {
  if (!files.any()) return grpc::InsecureChannelCredentials();
  absl::StatusOr<Pems> p = Read(files);
  if (!p.ok()) return p.status();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = p->ca;
  options.pem_private_key = p->key;
  options.pem_cert_chain = p->cert;
  return grpc::SslCredentials(options);
}

}  // namespace nextserve::cli
