//! The server's only calls into the C library that need `unsafe`: reading and raising the
//! open-files limit (`getrlimit`/`setrlimit`, which std does not wrap), and giving the
//! allocator's free memory back after a burst (`malloc_trim`). Every other system call goes
//! through mio, socket2 or std. The crate denies `unsafe_code` everywhere else.

#![allow(unsafe_code)]

use std::io;

/// The soft open-files limit of this process.
pub fn open_files_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_open_files_limit() -> io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(open_files_limit())
}

/// Gives the allocator's free memory back to the kernel: glibc's `malloc_trim(0)`, which
/// returns the free pages of every arena (not only the top of each heap). Freed memory
/// otherwise stays in the process's RSS until reused. Returns whether any was given back;
/// `false` where the C library has no such call.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer; it walks the allocator's own free lists under
        // each arena's lock, so any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_reads_and_raising_it_never_lowers_it() {
        let before = open_files_limit();
        assert!(before > 0);
        let raised = raise_open_files_limit().expect("raising to the hard limit is allowed");
        assert!(raised >= before, "{raised} < {before}");
        assert_eq!(open_files_limit(), raised);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_memory_of_a_burst_is_given_back() {
        // 16 MiB in 64 KiB blocks (below the mmap threshold, so on the heap), each followed
        // by a small one that stays: the big ones, once freed, are holes that `free` alone
        // cannot give back (only the top of a heap shrinks).
        let mut big = Vec::new();
        let mut small = Vec::new();
        for i in 0..256u32 {
            big.push(vec![1u8; 64 * 1024]);
            small.push(Box::new(i));
        }
        drop(big);
        assert!(
            release_free_heap(),
            "16 MiB of holes and nothing given back"
        );
        assert_eq!(small.iter().map(|b| u64::from(**b)).sum::<u64>(), 255 * 128);
    }
}
