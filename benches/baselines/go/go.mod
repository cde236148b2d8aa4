module thaw.dev/baselines/hello

go 1.21
