//! The kernel side of pod networking: network namespaces kept alive as bind-mounted files; the node's
//! bridge, made for pods without a namespace and removed once no pod uses it; their addresses on it
//! (rtnetlink, as `ip address` does it, without a process per change).

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `SIOCBRADDBR` and `SIOCBRDELBR` from linux/sockios.h (the libc crate has them for Android only).
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Creates a new network namespace and keeps it alive as a bind mount on `path` (an empty file), the way
/// `ip netns add` does. The namespace is made on a thread of its own: `unshare` moves only the calling
/// thread, and that thread ends right after, so no other thread of the agent ever changes namespace.
pub fn create_netns(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    File::create(path)?;
    let target = c_path(path)?;
    let made = std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || {
            // SAFETY: unshare affects only this thread, which ends when this closure returns.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            let source = c"/proc/thread-self/ns/net";
            // SAFETY: both paths are NUL-terminated strings that outlive the call; no fs type or data.
            check(unsafe {
                libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            })
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Creates a user namespace mapping ids 0..`size` to `host_id`.. (users and groups alike) and a network
/// namespace owned by it, each kept alive as a bind mount on its file (`userns`, `netns`), for a pod with
/// `hostUsers: false`: its containers join both, and are root in their own network as in Kubernetes.
///
/// A thread cannot make a user namespace in a threaded process, so a child process does: forked, it
/// makes both namespaces and waits while the agent writes its id maps (as root in the parent namespace,
/// which needs no `setgroups` deny) and bind-mounts its namespace files, then it is told to exit. Between
/// fork and exit the child makes raw system calls only: another thread of the agent may have held a lock
/// (the allocator's) at the fork. The pipes between them carry a byte each way rather than their ends'
/// closing, which a child forked at the same time by another thread, holding copies, would delay.
pub fn create_netns_in_userns(netns: &Path, userns: &Path, host_id: u32, size: u32) -> io::Result<()> {
    for path in [netns, userns] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        File::create(path)?;
    }
    let made = namespaces_from_child(netns, userns, host_id, size);
    if made.is_err() {
        let _ = remove_netns(netns);
        let _ = remove_netns(userns);
    }
    made
}

fn namespaces_from_child(netns: &Path, userns: &Path, host_id: u32, size: u32) -> io::Result<()> {
    let (netns, userns) = (c_path(netns)?, c_path(userns)?);
    let (ready_read, ready_write) = pipe()?;
    let (go_read, go_write) = pipe()?;
    // SAFETY: the child below makes only async-signal-safe system calls, then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: the child: raw syscalls on descriptors it inherited, then _exit, never returning.
        unsafe {
            let made = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0;
            let byte = [u8::from(made)];
            libc::write(ready_write.as_raw_fd(), byte.as_ptr().cast(), 1);
            let mut go = [0u8; 1];
            libc::read(go_read.as_raw_fd(), go.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop((ready_write, go_read));
    let configured = (|| {
        let mut ready = [0u8; 1];
        let read = loop {
            // SAFETY: reads one byte into `ready`, a live buffer of that size.
            let read = unsafe { libc::read(ready_read.as_raw_fd(), ready.as_mut_ptr().cast(), 1) };
            if read >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break read;
            }
        };
        if read != 1 || ready[0] != 1 {
            return Err(io::Error::other("the namespace child could not unshare its user and network namespaces"));
        }
        let map = format!("0 {host_id} {size}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        for (kind, target) in [("user", &userns), ("net", &netns)] {
            let source = c_path(Path::new(&format!("/proc/{pid}/ns/{kind}")))?;
            // SAFETY: both paths are NUL-terminated strings that outlive the call; no fs type or data.
            check(unsafe {
                libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            })?;
        }
        Ok(())
    })();
    // A byte tells the child to exit, whatever happened (not the pipe's end: another child forked meanwhile
    // may hold a copy of its write end); then it is reaped.
    // SAFETY: writes one byte from a live buffer.
    unsafe { libc::write(go_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    drop(go_write);
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into `status`.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    configured
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which are then owned here.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just made by pipe2 and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether `path` is a live network namespace file (a bind mount of nsfs), not a leftover plain file.
pub fn is_netns(path: &Path) -> bool {
    let Ok(name) = c_path(path) else { return false };
    // SAFETY: statfs only writes into `stat`, a zeroed, properly sized statfs.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `stat` is writable.
    let result = unsafe { libc::statfs(name.as_ptr(), &mut stat) };
    result == 0 && stat.f_type == libc::NSFS_MAGIC as libc::__fsword_t
}

/// Unmounts and removes a namespace file; the namespace ends once nothing else holds it. Missing is fine.
pub fn remove_netns(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: `target` is NUL-terminated and outlives the call.
    if let Err(e) = check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }) {
        // EINVAL: not a mount point (already unmounted); ENOENT: already gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The network namespace this process runs in, named by its nsfs file's device and inode (`dev:ino`),
/// which stay the same for as long as the namespace exists.
pub fn current_netns() -> Option<String> {
    netns_of(Path::new("/proc/self/ns/net"))
}

pub(super) fn netns_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(format!("{}:{}", metadata.dev(), metadata.ino()))
}

/// Whether the network namespace `id` (as [`current_netns`] names it) still exists: a process runs in it
/// or a file under /run/netns (`ip netns`) holds it.
pub fn netns_exists(id: &str) -> bool {
    let named = std::fs::read_dir("/run/netns").into_iter().flatten().flatten().map(|entry| entry.path());
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .map(|entry| entry.path().join("ns/net"));
    named.chain(processes).any(|path| netns_of(&path).as_deref() == Some(id))
}

/// An AF_INET datagram socket: what the interface and bridge ioctls are made on.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory arguments; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn interface_name(name: &str) -> io::Result<std::ffi::CString> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name {name:?}")));
    }
    std::ffi::CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO))
}

/// Sets or clears IFF_UP on the interface `name`.
fn set_up(socket: &OwnedFd, name: &std::ffi::CStr, up: bool) -> io::Result<()> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.to_bytes()) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq passed by pointer.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) })?;
    let flag = libc::IFF_UP as libc::c_short;
    // SAFETY: the flags member is the one SIOCGIFFLAGS filled in.
    let flags = unsafe { &mut request.ifr_ifru.ifru_flags };
    if (*flags & flag != 0) == up {
        return Ok(());
    }
    *flags = if up { *flags | flag } else { *flags & !flag };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) })
}

/// Takes the bridge `name` down and deletes it (the bridge plugin never does). A missing bridge is fine.
pub fn delete_bridge(name: &str) -> io::Result<()> {
    let bridge = interface_name(name)?;
    let socket = inet_socket()?;
    if let Err(e) = set_up(&socket, &bridge, false) {
        return if is_missing(&e) { Ok(()) } else { Err(e) };
    }
    // SAFETY: SIOCBRDELBR reads the NUL-terminated name, which outlives the call.
    match check(unsafe { libc::ioctl(socket.as_raw_fd(), SIOCBRDELBR, bridge.as_ptr()) }) {
        Err(e) if !is_missing(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Makes sure the bridge `name` exists, is up and has `gateway`/`prefix`, as the bridge plugin leaves it
/// with `isGateway` (the plugin accepts a bridge made here, and this one made by the plugin). The gateway
/// must be the bridge's first address: the plugin refuses a bridge whose first IPv4 address is another.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let bridge = interface_name(name)?;
    let socket = inet_socket()?;
    // SAFETY: SIOCBRADDBR reads the NUL-terminated name, which outlives the call.
    if let Err(e) = check(unsafe { libc::ioctl(socket.as_raw_fd(), SIOCBRADDBR, bridge.as_ptr()) })
        && e.raw_os_error() != Some(libc::EEXIST)
    {
        return Err(e);
    }
    add_address(name, gateway, prefix)?;
    set_up(&socket, &bridge, true)
}

/// Adds `ip`/`prefix` to the interface `name`, as `ip address add` does; one already there is fine.
pub fn add_address(name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    match change_address(libc::RTM_NEWADDR, flags, name, ip, prefix) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Removes `ip`/`prefix` from the interface `name`; an address or interface already gone is fine.
pub fn remove_address(name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    match change_address(libc::RTM_DELADDR, 0, name, ip, prefix) {
        Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        other => other,
    }
}

/// One rtnetlink address request (`RTM_NEWADDR` or `RTM_DELADDR`), answered by the kernel's ack.
fn change_address(kind: u16, flags: libc::c_int, name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let interface = interface_name(name)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name, which outlives the call.
    let index = unsafe { libc::if_nametoindex(interface.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // nlmsghdr (16 bytes), ifaddrmsg (8), then IFA_LOCAL and IFA_ADDRESS attributes (8 each).
    let mut message = Vec::with_capacity(40);
    let header_flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
    message.extend_from_slice(&40u32.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&header_flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&[libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE]);
    message.extend_from_slice(&index.to_ne_bytes());
    for attribute in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        message.extend_from_slice(&8u16.to_ne_bytes());
        message.extend_from_slice(&attribute.to_ne_bytes());
        message.extend_from_slice(&ip.octets());
    }
    // SAFETY: socket has no memory arguments; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all zeroes, with the family set, addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The ack: nlmsghdr of type NLMSG_ERROR, then the error (0 or -errno) and the request's header.
    let mut answer = [0u8; 256];
    loop {
        // SAFETY: the buffer is valid for its length.
        let received = unsafe { libc::recv(socket.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
        if received < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let answer = &answer[..received as usize];
        let field = |at: usize| answer.get(at..at + 4).map(|b| [b[0], b[1], b[2], b[3]]);
        let kind = answer.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        return match (kind, field(16)) {
            (Some(kind), Some(error)) if kind == libc::NLMSG_ERROR as u16 => match i32::from_ne_bytes(error) {
                0 => Ok(()),
                errno => Err(io::Error::from_raw_os_error(-errno)),
            },
            _ => Err(io::Error::other("unexpected rtnetlink answer")),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 addresses of `name`, in the kernel's order, seen from the calling thread's namespace.
    fn addresses(name: &str) -> Vec<Ipv4Addr> {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list`, freed below.
        assert_eq!(unsafe { libc::getifaddrs(&mut list) }, 0);
        let mut found = Vec::new();
        let mut next = list;
        while !next.is_null() {
            // SAFETY: a node of the list getifaddrs made, alive until freeifaddrs.
            let entry = unsafe { &*next };
            // SAFETY: ifa_name is a NUL-terminated string of the same list.
            let entry_name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            // SAFETY: an AF_INET ifa_addr points to a sockaddr_in.
            if entry_name.to_bytes() == name.as_bytes()
                && !entry.ifa_addr.is_null()
                && i32::from(unsafe { (*entry.ifa_addr).sa_family }) == libc::AF_INET
            {
                // SAFETY: as above.
                let address = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                found.push(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)));
            }
            next = entry.ifa_next;
        }
        // SAFETY: the list getifaddrs made.
        unsafe { libc::freeifaddrs(list) };
        found
    }

    /// In a network namespace of the test's own (on a thread of its own), so the host's links are untouched.
    #[test]
    fn a_bridge_gets_its_gateway_first_and_pod_addresses_come_and_go() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "making a bridge needs root: run the tests as root");
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with the test.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) }).unwrap();
            // Local delivery goes through the loopback, down in a new namespace.
            set_up(&inet_socket().unwrap(), c"lo", true).unwrap();
            let gateway = Ipv4Addr::new(10, 42, 7, 1);
            let pod = Ipv4Addr::new(10, 42, 7, 5);
            let missing = add_address("skftest", pod, 32).unwrap_err();
            assert_eq!(missing.raw_os_error(), Some(libc::ENODEV), "no bridge yet: {missing}");
            ensure_bridge("skftest", gateway, 24).unwrap();
            ensure_bridge("skftest", gateway, 24).unwrap();
            add_address("skftest", pod, 32).unwrap();
            add_address("skftest", pod, 32).unwrap();
            assert_eq!(addresses("skftest"), [gateway, pod], "the gateway first, as the bridge plugin needs");
            // The address is the node's own: a pod listens on it and is reached there.
            let listener = std::net::TcpListener::bind((pod, 0)).unwrap();
            std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            drop(listener);
            remove_address("skftest", pod, 32).unwrap();
            remove_address("skftest", pod, 32).unwrap();
            assert_eq!(addresses("skftest"), [gateway]);
            let gone = std::net::TcpListener::bind((pod, 0)).unwrap_err();
            assert_eq!(gone.raw_os_error(), Some(libc::EADDRNOTAVAIL));
            delete_bridge("skftest").unwrap();
            delete_bridge("skftest").unwrap();
            remove_address("skftest", pod, 32).unwrap();
            assert!(addresses("skftest").is_empty());
            assert!(ensure_bridge("a/b", gateway, 24).is_err());
        })
        .join()
        .unwrap();
    }

    /// The namespaces of a pod with `hostUsers: false`: its network namespace is owned by its own user
    /// namespace, and both go with their files.
    #[test]
    fn a_user_namespace_owns_the_pods_network_namespace() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "making a user namespace's id maps needs root");
        let dir = tempfile::tempdir().unwrap();
        let (netns, userns) = (dir.path().join("netns/pod"), dir.path().join("userns/pod"));
        create_netns_in_userns(&netns, &userns, 65_536 * 300, 65_536).unwrap();
        assert!(is_netns(&netns) && is_netns(&userns));
        let net = File::open(&netns).unwrap();
        /// `NS_GET_USERNS` from linux/nsfs.h: the user namespace owning a namespace.
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        // SAFETY: the ioctl takes no argument and returns a new descriptor, owned below.
        let owner = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS) };
        assert!(owner >= 0, "{}", io::Error::last_os_error());
        // SAFETY: a descriptor the ioctl just made.
        let owner = File::from(unsafe { OwnedFd::from_raw_fd(owner) });
        let owner_inode = owner.metadata().unwrap().ino();
        assert_eq!(owner_inode, std::fs::metadata(&userns).unwrap().ino(), "the pod's user namespace owns its network");
        remove_netns(&netns).unwrap();
        remove_netns(&userns).unwrap();
        assert!(!netns.exists() && !userns.exists());
    }
}
