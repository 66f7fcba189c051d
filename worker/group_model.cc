#include "worker/group_model.h"

namespace nextserve::worker {

absl::StatusOr<GroupModel> LoadGroupModel(const std::string& model_dir,
                                          const std::string& placement_file) {
  GroupModel g;
  auto session = comm::MpiSession::Start();
  if (!session.ok()) return session.status();
  g.session = std::move(*session);
  auto comm = g.session->WorldCommunicator();
  if (!comm.ok()) return comm.status();
  g.comm = std::move(*comm);
  auto config = LoadModelConfig(model_dir + "/config.json");
  if (!config.ok()) return config.status();
  auto placement = placement_file.empty()
                       ? ExpertPlacement::Contiguous(config->num_experts, g.size())
                       : ExpertPlacement::FromFile(placement_file, config->num_experts, g.size());
  if (!placement.ok()) return placement.status();
  g.placement = std::move(*placement);
  LoadOptions options;
  if (g.size() > 1) options.experts = g.placement.ExpertsOf(g.rank());
  auto weights = ModelWeights::Load(model_dir, options);
  if (!weights.ok()) return weights.status();
  g.weights = std::move(*weights);
  return g;
}

}  // namespace nextserve::worker
