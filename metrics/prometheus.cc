#include "metrics/prometheus.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace nextserve::metrics {
namespace {

class PromCounter final : public Counter {
 public:
  explicit PromCounter(prometheus::Counter& c) : c_(c) {}
  void Add(double amount) override { c_.Increment(amount); }

 private:
  prometheus::Counter& c_;
};

class PromGauge final : public Gauge {
 public:
  explicit PromGauge(prometheus::Gauge& g) : g_(g) {}
  void Set(double value) override { g_.Set(value); }

 private:
  prometheus::Gauge& g_;
};

class PromHistogram final : public Histogram {
 public:
  explicit PromHistogram(prometheus::Histogram& h) : h_(h) {}
  void Observe(double value) override { h_.Observe(value); }

 private:
  prometheus::Histogram& h_;
};

std::string SeriesKey(const std::string& name, const Labels& labels) {
  std::string key = name;
  for (const auto& [k, v] : labels) absl::StrAppend(&key, "\x1f", k, "=", v);
  return key;
}

}  // namespace

// The prometheus-cpp registry plus our adapters and hooks. A Collectable, so that a scrape runs
// the hooks before it reads the values.
struct PrometheusRegistry::State final : public prometheus::Collectable {
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<std::function<void()>> to_run;
    {
      std::lock_guard lock(mu);
      to_run = hooks;
    }
    for (const auto& hook : to_run) hook();
    return registry.Collect();
  }

  prometheus::Registry registry;
  mutable std::mutex mu;
  std::map<std::string, prometheus::Family<prometheus::Counter>*> counter_families;
  std::map<std::string, prometheus::Family<prometheus::Gauge>*> gauge_families;
  std::map<std::string, prometheus::Family<prometheus::Histogram>*> histogram_families;
  std::map<std::string, std::unique_ptr<Counter>> counters;  // by SeriesKey
  std::map<std::string, std::unique_ptr<Gauge>> gauges;
  std::map<std::string, std::unique_ptr<Histogram>> histograms;
  std::vector<std::function<void()>> hooks;
};

PrometheusRegistry::PrometheusRegistry() : state_(std::make_shared<State>()) {}
PrometheusRegistry::~PrometheusRegistry() = default;

Counter& PrometheusRegistry::GetCounter(const std::string& name, const std::string& help,
                                        const Labels& labels) {
  std::lock_guard lock(state_->mu);
  auto& series = state_->counters[SeriesKey(name, labels)];
  if (!series) {
    auto& family = state_->counter_families[name];
    if (family == nullptr)
      family = &prometheus::BuildCounter().Name(name).Help(help).Register(state_->registry);
    series = std::make_unique<PromCounter>(family->Add(labels));
  }
  return *series;
}

Gauge& PrometheusRegistry::GetGauge(const std::string& name, const std::string& help,
                                    const Labels& labels) {
  std::lock_guard lock(state_->mu);
  auto& series = state_->gauges[SeriesKey(name, labels)];
  if (!series) {
    auto& family = state_->gauge_families[name];
    if (family == nullptr)
      family = &prometheus::BuildGauge().Name(name).Help(help).Register(state_->registry);
    series = std::make_unique<PromGauge>(family->Add(labels));
  }
  return *series;
}

Histogram& PrometheusRegistry::GetHistogram(const std::string& name, const std::string& help,
                                            const Labels& labels,
                                            const std::vector<double>& buckets) {
  std::lock_guard lock(state_->mu);
  auto& series = state_->histograms[SeriesKey(name, labels)];
  if (!series) {
    auto& family = state_->histogram_families[name];
    if (family == nullptr)
      family = &prometheus::BuildHistogram().Name(name).Help(help).Register(state_->registry);
    series = std::make_unique<PromHistogram>(family->Add(labels, buckets));
  }
  return *series;
}

void PrometheusRegistry::OnCollect(std::function<void()> hook) {
  std::lock_guard lock(state_->mu);
  state_->hooks.push_back(std::move(hook));
}

std::string PrometheusRegistry::TextFormat() const {
  return prometheus::TextSerializer().Serialize(state_->Collect());
}

struct PrometheusExporter::Impl {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::shared_ptr<PrometheusRegistry::State> state;  // kept alive while the exposer serves it
};

absl::StatusOr<std::unique_ptr<PrometheusExporter>> PrometheusExporter::Start(
    const std::string& host, int port, PrometheusRegistry& registry) {
  const std::string address = absl::StrCat(host, ":", port);
  auto impl = std::make_unique<Impl>();
  try {
    // civetweb throws when it cannot listen; that is a startup error, not a crash.
    impl->exposer = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  impl->state = registry.state_;
  impl->exposer->RegisterCollectable(impl->state);
  const std::vector<int> ports = impl->exposer->GetListeningPorts();
  if (ports.empty())
    return absl::UnavailableError(absl::StrCat("metrics: no listening port on ", address));
  const int bound = ports.front();
  return std::unique_ptr<PrometheusExporter>(new PrometheusExporter(std::move(impl), bound));
}

PrometheusExporter::PrometheusExporter(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}
PrometheusExporter::~PrometheusExporter() = default;

}  // namespace nextserve::metrics
