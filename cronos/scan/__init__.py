"""The scan, without I/O: the core that runs every probe of a scan
(``core``), the replay of our own captures through it (``replay``), passive
extraction from anybody's capture (``passive``), and a simulated network to
drive the core against scripted peers (``sim``)."""
