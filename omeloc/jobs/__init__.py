"""Jobs: thin compositions of the layers below (plate prediction, the demo)."""
