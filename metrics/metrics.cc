#include "metrics/metrics.h"

namespace nextserve::metrics {
namespace {

class NoopSeries final : public Counter, public Gauge, public Histogram {
 public:
  void Add(double) override {}
  void Set(double) override {}
  void Observe(double) override {}
};

class NoopRegistryImpl final : public Registry {
 public:
  Counter& GetCounter(const std::string&, const std::string&, const Labels&) override {
    return series_;
  }
  Gauge& GetGauge(const std::string&, const std::string&, const Labels&) override {
    return series_;
  }
  Histogram& GetHistogram(const std::string&, const std::string&, const Labels&,
                          const std::vector<double>&) override {
    return series_;
  }
  void OnCollect(std::function<void()>) override {}

 private:
  NoopSeries series_;
};

}  // namespace

Registry& NoopRegistry() {
  static NoopRegistryImpl* registry = new NoopRegistryImpl();  // never destroyed: used at exit
  return *registry;
}

}  // namespace nextserve::metrics
