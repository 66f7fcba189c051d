// What every rank executable does first: join the job's expert-parallel group (MPI under mpirun,
// a group of one otherwise), decide the expert placement, and load the backbone plus this rank's
// experts.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/mpi_session.h"
#include "model/expert_placement.h"
#include "model/weights.h"

namespace nextserve::worker {

struct GroupModel {
  std::unique_ptr<comm::MpiSession> session;
  std::unique_ptr<comm::Communicator> comm;
  ExpertPlacement placement;
  std::shared_ptr<const ModelWeights> weights;
  int rank() const { return comm->rank(); }
  int size() const { return comm->size(); }
};

// `placement_file`: one rank per expert line (empty: contiguous blocks).
absl::StatusOr<GroupModel> LoadGroupModel(const std::string& model_dir,
                                          const std::string& placement_file);

}  // namespace nextserve::worker
