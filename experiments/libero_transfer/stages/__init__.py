"""The experiment's stages, in the order a run goes through them: data, pretrain, adapters, rollouts, offline."""
