// The metrics interface on prometheus-cpp: series identity, the exposition text, collect hooks,
// the serving series' labels and step accounting, and the HTTP exposer on a free port.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/prometheus.h"
#include "metrics/serving.h"

namespace nextserve::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(PrometheusRegistry, SameNameAndLabelsIsOneSeries) {
  PrometheusRegistry r;
  Counter& a = r.GetCounter("t_requests_total", "help", {{"k", "v"}});
  Counter& b = r.GetCounter("t_requests_total", "help", {{"k", "v"}});
  Counter& c = r.GetCounter("t_requests_total", "help", {{"k", "w"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  a.Add(2);
  b.Add(3);
  c.Add();
  const std::string text = r.TextFormat();
  EXPECT_THAT(text, HasSubstr("t_requests_total{k=\"v\"} 5"));
  EXPECT_THAT(text, HasSubstr("t_requests_total{k=\"w\"} 1"));
}

TEST(PrometheusRegistry, HistogramBucketsAndHooks) {
  PrometheusRegistry r;
  Histogram& h = r.GetHistogram("t_latency_seconds", "help", {}, {0.1, 1});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(5);
  Gauge& g = r.GetGauge("t_depth", "help", {});
  int calls = 0;
  r.OnCollect([&] { g.Set(++calls * 10); });
  const std::string text = r.TextFormat();
  EXPECT_EQ(calls, 1);
  EXPECT_THAT(text, HasSubstr("t_latency_seconds_bucket{le=\"0.1\"} 1"));
  EXPECT_THAT(text, HasSubstr("t_latency_seconds_bucket{le=\"1\"} 2"));
  EXPECT_THAT(text, HasSubstr("t_latency_seconds_bucket{le=\"+Inf\"} 3"));
  EXPECT_THAT(text, HasSubstr("t_latency_seconds_count 3"));
  EXPECT_THAT(text, HasSubstr("t_depth 10"));
}

TEST(NoopRegistry, RecordsNothingAndNeverRunsHooks) {
  Registry& r = NoopRegistry();
  bool ran = false;
  r.OnCollect([&] { ran = true; });
  RouterMetrics m(r, "x");  // binds every series without failing
  m.time_to_first_token.Observe(1);
  m.Failed(14);
  EXPECT_FALSE(ran);
}

TEST(RouterMetrics, ErrorsByCodeNameAndFinishReasons) {
  PrometheusRegistry r;
  RouterMetrics m(r, "qwen");
  m.Failed(8);   // RESOURCE_EXHAUSTED
  m.Failed(14);  // UNAVAILABLE
  m.Failed(14);
  m.Failed(99);  // out of range: UNKNOWN
  m.Finished(/*by_length=*/true);
  m.Finished(/*by_length=*/false);
  m.Finished(/*by_length=*/false);
  const std::string text = r.TextFormat();
  EXPECT_THAT(
      text,
      HasSubstr("nextserve_request_errors_total{code=\"UNAVAILABLE\",model_name=\"qwen\"} 2"));
  EXPECT_THAT(
      text,
      HasSubstr(
          "nextserve_request_errors_total{code=\"RESOURCE_EXHAUSTED\",model_name=\"qwen\"} 1"));
  EXPECT_THAT(text,
              HasSubstr("nextserve_request_errors_total{code=\"UNKNOWN\",model_name=\"qwen\"} 1"));
  EXPECT_THAT(text,
              HasSubstr("nextserve_request_errors_total{code=\"INTERNAL\",model_name=\"qwen\"} 0"));
  EXPECT_THAT(
      text,
      HasSubstr("nextserve_request_success_total{finish_reason=\"stop\",model_name=\"qwen\"} 2"));
  EXPECT_THAT(
      text,
      HasSubstr("nextserve_request_success_total{finish_reason=\"length\",model_name=\"qwen\"} 1"));
}

TEST(RankMetrics, StepSplitsTimeAndCountsTokensPerLayerFromCumulativeCounts) {
  PrometheusRegistry r;
  RankMetrics m(r, {.model_name = "qwen", .rank = 1, .layers = 2, .moe_layers = {1}, .experts = 3});
  // Layer 0 is dense (never counts); layer 1's experts 0 and 2 are held here: 6 + 4 in all.
  m.RecordStep(0.5, 0.25, 1000, {0, 0, 0, 4, 0, 1});
  m.RecordStep(0.25, 0.125, 24, {0, 0, 0, 6, 0, 4});
  const std::string text = r.TextFormat();
  EXPECT_THAT(
      text,
      HasSubstr("nextserve_rank_step_duration_seconds_count{model_name=\"qwen\",rank=\"1\"} 2"));
  EXPECT_THAT(text, HasSubstr("nextserve_rank_step_phase_seconds_total{model_name=\"qwen\",phase="
                              "\"all_to_all\",rank=\"1\"} 0.375"));
  EXPECT_THAT(text, HasSubstr("nextserve_rank_step_phase_seconds_total{model_name=\"qwen\",phase="
                              "\"compute\",rank=\"1\"} 0.375"));
  EXPECT_THAT(text,
              HasSubstr("nextserve_all_to_all_bytes_total{model_name=\"qwen\",rank=\"1\"} 1024"));
  EXPECT_THAT(
      text,
      HasSubstr("nextserve_expert_tokens_total{layer=\"1\",model_name=\"qwen\",rank=\"1\"} 10"));
  EXPECT_THAT(text, Not(HasSubstr("layer=\"0\"")));
  EXPECT_THAT(text, Not(HasSubstr("nextserve_expert_tokens_by_expert_total")));  // opt-in only
}

TEST(RankMetrics, PerExpertSeriesOnlyWhenAskedAndOnlyForExpertsThatRan) {
  PrometheusRegistry r;
  RankMetrics m(r, {.model_name = "qwen",
                    .rank = 0,
                    .layers = 1,
                    .moe_layers = {0},
                    .experts = 4,
                    .per_expert = true});
  m.RecordStep(0.1, 0, 0, {3, 0, 2, 0});
  m.SetPreemptionsTotal(2);
  m.SetPreemptionsTotal(5);
  m.SetPrefixCacheTotals(100, 40, 1, 2);
  m.SetPrefixCacheTotals(250, 140, 1, 3);
  const std::string text = r.TextFormat();
  EXPECT_THAT(
      text, HasSubstr("nextserve_prefix_cache_queries_total{model_name=\"qwen\",rank=\"0\"} 250"));
  EXPECT_THAT(text,
              HasSubstr("nextserve_prefix_cache_hits_total{model_name=\"qwen\",rank=\"0\"} 140"));
  EXPECT_THAT(text, HasSubstr("nextserve_prefix_cache_block_evictions_total{model_name=\"qwen\","
                              "rank=\"0\"} 3"));
  EXPECT_THAT(text, HasSubstr("nextserve_expert_tokens_by_expert_total{expert=\"0\",layer=\"0\","
                              "model_name=\"qwen\",rank=\"0\"} 3"));
  EXPECT_THAT(text, HasSubstr("nextserve_expert_tokens_by_expert_total{expert=\"2\",layer=\"0\","
                              "model_name=\"qwen\",rank=\"0\"} 2"));
  EXPECT_THAT(text, Not(HasSubstr("expert=\"1\"")));
  EXPECT_THAT(text, HasSubstr("nextserve_num_preemptions_total{model_name=\"qwen\",rank=\"0\"} 5"));
}

// GET /metrics over a plain socket: what Prometheus's scraper sees.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect failed";
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: x\r\n\r\n");
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
  close(fd);
  return out;
}

TEST(PrometheusExporter, ServesOnAFreePortAndRefusesABusyOne) {
  PrometheusRegistry r;
  r.GetCounter("t_served_total", "help", {}).Add(7);
  auto exporter = PrometheusExporter::Start("127.0.0.1", 0, r);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  const int port = (*exporter)->port();
  ASSERT_GT(port, 0);
  const std::string response = HttpGet(port, "/metrics");
  EXPECT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(response, HasSubstr("t_served_total 7"));

  auto second = PrometheusExporter::Start("127.0.0.1", port, r);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(absl::StrCat("127.0.0.1:", port)));
}

}  // namespace
}  // namespace nextserve::metrics
