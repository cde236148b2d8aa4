import subprocess,sys,collections,re
F=int(__import__("os").environ.get("F","1")); data=sys.argv[1]; n=int(open(data+'.n').read())
out=subprocess.run(["perf","script","-i",data,"-F","ip,sym"],capture_output=True,text=True).stdout
skip=re.compile(r"^(__GI___libc_malloc|malloc|alloc::|<alloc::|core::|hashbrown::|__rust|std::|<std::|<core::|<hashbrown|bytes::|<bytes::|<T as |smallvec::|<smallvec|<\[T\]|\[unknown\])")
c=collections.Counter(); total=0
for ev in out.split("\n\n"):
    lines=[l.strip() for l in ev.strip().splitlines() if l.strip()]
    if not lines: continue
    total+=1
    frames=[re.sub(r"::h[0-9a-f]{16}$","",l.split(None,1)[1]) if len(l.split(None,1))>1 else '?' for l in lines]
    pick=[f for f in frames[1:] if not skip.match(f)][:int(sys.argv[3]) if len(sys.argv)>3 else 1]
    c[" <- ".join(x[:90] for x in pick) or '?']+=1
# record is 1 s of the 1 s wrk run: scale by events/requests overall
print("events",total,"requests",n,"events per request", round(total/n,1))
for k,v in c.most_common(int(sys.argv[2])): print(f"{v*F/n:6.2f} {k}")
