"""Scene-like word renders: the text (corpus), the surfaces (textures and colours), the text layer, degradation."""
