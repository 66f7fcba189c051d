// TLS for gRPC ports from PEM files named on the command line: one place that reads the files
// (errors name the flag and the file) and builds server or channel credentials, so the router's
// public port, the ranks' internal ports and the router's channels to them share the rules.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cli/flags.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace nextserve::cli {

struct TlsFiles {
  std::string cert;         // PEM certificate chain of this side
  std::string key;          // its PEM private key
  std::string ca;           // PEM roots to verify the peer with (server: client certificates)
  std::string flag_prefix;  // "tls" or "rank-tls": how the flags are spelled in messages
  bool any() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

// Adds --<prefix>-cert, --<prefix>-key and --<prefix>-ca to `flags`, described for `role`.
void AddTlsFlags(Flags& flags, const std::string& prefix, const std::string& role, TlsFiles* out);

// Insecure when no file is set. A server needs cert + key; with ca it requires and verifies
// client certificates (mutual TLS).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFiles& files);
// Insecure when no file is set. ca verifies the server (else the system roots); cert + key
// (both or neither) present a client certificate.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const TlsFiles& files);

}  // namespace nextserve::cli
