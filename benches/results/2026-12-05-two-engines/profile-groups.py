# Per-request CPU of two perf profiles (profile-c32.sh), by where the samples fall: kernel,
# wasmtime, thaw, hyper/http, tokio, libc, tracing. usage: profile-groups.py A A_RPS B B_RPS
# (A and B: the OUT prefixes given to profile-c32.sh; *_RPS: the requests/s it printed).
import subprocess,sys,re,collections
def load(f, rps):
    tc=float(re.search(r"([\d.]+) msec task-clock", open(f+'.stat').read()).group(1).replace(',',''))
    us=tc*1000/(rps*5)
    out=subprocess.run(["perf","report","-i",f+".data","--no-children","--sort","dso,sym","--stdio","-q","-g","none","--percent-limit","0"],capture_output=True,text=True).stdout
    d=collections.Counter()
    for line in out.splitlines():
        m=re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)",line)
        if not m: continue
        pct=float(m.group(1)); dso=m.group(2); k=m.group(3); name=m.group(4)
        if k=='k': g='kernel'
        elif 'wasmtime' in name or 'cranelift' in name: g='wasmtime'
        elif 'thaw' in name: g='thaw'
        elif 'hyper' in name or 'http::' in name or 'h2::' in name: g='hyper/http'
        elif 'tokio' in name or 'mio' in name: g='tokio'
        elif 'tracing' in name: g='tracing'
        elif dso.startswith('libc') or name in ('malloc','_int_free','_int_malloc','cfree@GLIBC_2.2.5','malloc_consolidate','unlink_chunk.constprop.0') or 'memmove' in name or 'memset' in name or 'memcpy' in name: g='libc'
        elif dso=='[unknown]' or dso.startswith('[JIT') or 'jitted' in dso or dso.startswith('perf-') : g='guest/jit'
        else: g='other:'+dso
        d[g]+=pct*us/100
    return d,us
a,ua=load(sys.argv[1],float(sys.argv[2])); b,ub=load(sys.argv[3],float(sys.argv[4]))
print("us/req",round(ua,1),round(ub,1))
for k in sorted(set(a)|set(b), key=lambda k:-(a[k]-b[k])): print(f"{a[k]-b[k]:+6.2f} {a[k]:6.2f} {b[k]:6.2f} {k}")
