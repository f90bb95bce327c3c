"""Input readers, dataset keys and the shard writer."""
