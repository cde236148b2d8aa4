import sys, re, subprocess, collections
f, reqs = sys.argv[1], float(sys.argv[2])
out = subprocess.run(["perf","report","-i",f,"--no-children","--sort","dso,sym","-g","none","--percent-limit","0","-F","period,dso,sym"],capture_output=True,text=True).stdout
tot=0; g=collections.Counter()
for line in out.splitlines():
    if line.startswith("#") or not line.strip(): continue
    m = re.match(r"\s*(\d+)\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m: continue
    p=int(m.group(1)); dso=m.group(2); sym=m.group(4)
    tot+=p
    if m.group(3)=='k': k='kernel'
    elif 'JIT' in dso or dso.startswith('[JIT'): k='guest'
    elif 'libc' in dso:
        k='libc-alloc' if re.search(r'malloc|free|_int_|unlink_chunk|consolidate|realloc',sym) else ('libc-mem' if 'mem' in sym else 'libc-other')
    else:
        s=re.sub(r'^<','',sym)
        mm=re.match(r'([a-z_0-9]+)::',s)
        k=mm.group(1) if mm else 'other:'+dso
        if k in ('core','alloc','std'): k='std/core'
    g[k]+=p
print(f, "total us/req %.1f"%(tot/1e3/reqs))
for k,v in g.most_common(25): print("  %-28s %6.2f us/req"%(k, v/1e3/reqs))
