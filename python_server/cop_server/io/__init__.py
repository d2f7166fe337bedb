"""Reading images and writing results (QuPath GeoJSON, overlay PNGs) for the command line and server."""
