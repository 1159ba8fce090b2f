"""Running compressed models: products that read prunellm's compressed layers as they are stored."""
