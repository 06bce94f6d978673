//! The server's only calls into the C library that need `unsafe`: reading and raising the
//! open-files limit (`getrlimit`/`setrlimit`, which std does not wrap). Every other system call
//! goes through mio, socket2 or std. The crate denies `unsafe_code` everywhere else.

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
}
