"""Offline dataset tooling: annotations -> file lists (`datasets`, `filelist`), re-encoding (`transcode`), synthetic
clips with ground truth (`synth`) and the `mgm-prepare` command line (`prepare`). Training reads what these write;
nothing here runs inside a training step."""
