module dspex.invalid/bench/lmserver

go 1.22
