package loader

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type xlb_counters -type xlb_backend -type xlb_flow_key -type xlb_flow -type xlb_drop -type xlb_service -type xlb_stats_slot -type xlb_backend_flags -type xlb_flow_dir -type xlb_flow_flags -type xlb_lease xlb ../bpf/xlb.c -- -I../bpf
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel xlbPass ../bpf/pass.c
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type bench_pkt xlbBench ../bpf/bench.c
