// A small HTTP/1.1 server on Boost.Beast + Asio: a few threads hold any number of connections and
// server-sent-event streams (no thread per request), keep-alive, bounded bodies, a header-read
// timeout, and a callback when a client goes away mid-stream. The handler runs on an I/O thread
// and must not block; a Response may be written from any thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace nextserve::router {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string target;                          // path (and query)
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
};

// The answer to one request: either Send() once, or StartEvents(), Event()..., End().
class HttpResponse {
 public:
  virtual ~HttpResponse() = default;
  virtual void Send(int status, const std::string& content_type, std::string body) = 0;
  virtual void StartEvents() = 0;                   // 200, text/event-stream, chunked
  virtual void Event(const std::string& data) = 0;  // "data: <data>\n\n"
  virtual void End() = 0;                           // ends the event stream
  // `on_close` runs once if the client disconnects before the response ended (never after).
  virtual void OnClose(std::function<void()> on_close) = 0;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
  int threads = 2;
  size_t max_body_bytes = 16 << 20;
  int header_timeout_s = 30;  // a client must send a whole request within this
};

class HttpServer {
 public:
  using Handler = std::function<void(HttpRequest, std::shared_ptr<HttpResponse>)>;
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           Handler handler);
  virtual ~HttpServer() = default;  // closes every connection and joins the threads
  virtual int port() const = 0;
  // Stops accepting; open connections stay until they end or the server is destroyed.
  virtual void StopAccepting() = 0;
};

}  // namespace nextserve::router
