#include "router/http_server.h"

#include <deque>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"

namespace nextserve::router {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Payload Too Large";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

class Session;

class Response final : public HttpResponse {
 public:
  explicit Response(std::shared_ptr<Session> session) : session_(std::move(session)) {}
  void Send(int status, const std::string& content_type, std::string body) override;
  void StartEvents() override;
  void Event(const std::string& data) override;
  void End() override;
  void OnClose(std::function<void()> on_close) override;

 private:
  std::shared_ptr<Session> session_;
};

// One connection. Everything below runs on the connection's strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const HttpServerOptions& options, const HttpServer::Handler& handler)
      : stream_(std::move(socket)), options_(options), handler_(handler) {}

  void Start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadRequest(); });
  }

  // From any thread: queue bytes; `ends` marks the response complete.
  void Write(std::string bytes, bool ends) {
    net::post(stream_.get_executor(), [self = shared_from_this(), bytes = std::move(bytes),
                                       ends]() mutable { self->Queue(std::move(bytes), ends); });
  }
  void SetOnClose(std::function<void()> on_close) {
    net::post(stream_.get_executor(),
              [self = shared_from_this(), f = std::move(on_close)]() mutable {
                if (self->closed_) {
                  if (!self->response_done_) f();
                } else {
                  self->on_close_ = std::move(f);
                }
              });
  }
  bool keep_alive() const { return keep_alive_; }

 private:
  void ReadRequest() {
    parser_.emplace();
    parser_->body_limit(options_.max_body_bytes);
    response_done_ = false;
    stream_.expires_after(std::chrono::seconds(options_.header_timeout_s));
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRequest(ec); });
  }

  void OnRequest(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      Queue(Format(413, "application/json",
                   absl::StrCat(
                       R"({"error":{"message":"body: larger than )", options_.max_body_bytes,
                       R"( bytes","type":"invalid_request_error","param":null,"code":413}})")),
            true);
      return;
    }
    if (ec) return Close();  // end of stream, timeout, malformed request
    stream_.expires_never();
    http::request<http::string_body> req = parser_->release();
    keep_alive_ = req.keep_alive();
    HttpRequest request;
    request.method = std::string(req.method_string());
    request.target = std::string(req.target());
    for (const auto& field : req) {
      request.headers[absl::AsciiStrToLower(std::string(field.name_string()))] =
          std::string(field.value());
    }
    request.body = std::move(req.body());
    Peek();  // notices a client that goes away while its response is being made
    handler_(std::move(request), std::make_shared<Response>(shared_from_this()));
  }

  void Peek() {
    peeking_ = true;
    stream_.async_read_some(
        buffer_.prepare(4096),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnPeek(ec, n); });
  }

  void OnPeek(beast::error_code ec, size_t n) {
    peeking_ = false;
    if (ec == net::error::operation_aborted && response_done_ && !closed_) return ReadRequest();
    if (ec) return Close();
    buffer_.commit(n);  // a pipelined request: parsed once this response is done
    if (response_done_) return ReadRequest();
    if (buffer_.size() < 65536) Peek();
  }

  void Queue(std::string bytes, bool ends) {
    if (closed_) return;
    if (ends) ends_queued_ = true;
    out_.push_back(std::move(bytes));
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    writing_ = true;
    net::async_write(
        stream_, net::buffer(out_.front()),
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnWritten(ec); });
  }

  void OnWritten(beast::error_code ec) {
    writing_ = false;
    if (ec) return Close();
    out_.pop_front();
    if (!out_.empty()) return WriteNext();
    if (!ends_queued_) return;
    ends_queued_ = false;
    response_done_ = true;
    on_close_ = nullptr;
    if (!keep_alive_) return Close();
    if (peeking_) {
      stream_.socket().cancel();  // OnPeek then reads the next request
    } else {
      ReadRequest();
    }
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    if (on_close_ && !response_done_) std::exchange(on_close_, nullptr)();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

 public:
  std::string Format(int status, const std::string& content_type, const std::string& body) const {
    return absl::StrCat("HTTP/1.1 ", status, " ", Reason(status),
                        "\r\nContent-Type: ", content_type, "\r\nContent-Length: ", body.size(),
                        keep_alive_ ? "\r\nConnection: keep-alive" : "\r\nConnection: close",
                        "\r\n\r\n", body);
  }

 private:
  beast::tcp_stream stream_;
  const HttpServerOptions& options_;
  const HttpServer::Handler& handler_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::deque<std::string> out_;
  std::function<void()> on_close_;
  bool writing_ = false, peeking_ = false, ends_queued_ = false, response_done_ = false;
  bool closed_ = false, keep_alive_ = true;
};

void Response::Send(int status, const std::string& content_type, std::string body) {
  session_->Write(session_->Format(status, content_type, body), /*ends=*/true);
}

void Response::StartEvents() {
  session_->Write(
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
      "Transfer-Encoding: chunked\r\nX-Accel-Buffering: no\r\n\r\n",
      false);
}

void Response::Event(const std::string& data) {
  const std::string event = absl::StrCat("data: ", data, "\n\n");
  session_->Write(absl::StrCat(absl::Hex(event.size()), "\r\n", event, "\r\n"), false);
}

void Response::End() {
  session_->Write("0\r\n\r\n", true);
}

void Response::OnClose(std::function<void()> on_close) {
  session_->SetOnClose(std::move(on_close));
}

class Server final : public HttpServer {
 public:
  Server(const HttpServerOptions& options, Handler handler)
      : options_(options), handler_(std::move(handler)), acceptor_(ioc_) {}

  ~Server() override {
    ioc_.stop();
    for (std::thread& t : threads_) t.join();
  }

  absl::Status Listen() {
    beast::error_code ec;
    const net::ip::address address = net::ip::make_address(options_.host, ec);
    if (ec)
      return absl::InvalidArgumentError(
          absl::StrCat("--http-host '", options_.host, "': ", ec.message()));
    const tcp::endpoint endpoint(address, static_cast<unsigned short>(options_.port));
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", options_.host, ":",
                                                 options_.port, ": ", ec.message()));
    }
    port_ = acceptor_.local_endpoint().port();
    Accept();
    for (int i = 0; i < std::max(1, options_.threads); ++i)
      threads_.emplace_back([this] { ioc_.run(); });
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void StopAccepting() override {
    net::post(acceptor_.get_executor(), [this] {
      beast::error_code ignored;
      acceptor_.close(ignored);
    });
  }

 private:
  void Accept() {
    acceptor_.async_accept(
        net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
          if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
          if (!ec) {
            socket.set_option(tcp::no_delay(true), ec);
            std::make_shared<Session>(std::move(socket), options_, handler_)->Start();
          }
          Accept();
        });
  }

  const HttpServerOptions options_;
  const Handler handler_;
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  std::vector<std::thread> threads_;
  int port_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              Handler handler) {
  auto server = std::make_unique<Server>(options, std::move(handler));
  if (absl::Status s = server->Listen(); !s.ok()) return s;
  return server;
}

}  // namespace nextserve::router
