"""workbench: hierarchical classification research workbench."""
