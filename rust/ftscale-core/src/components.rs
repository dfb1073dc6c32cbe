//! Connected components (union-find) and the per-cluster representative.

/// Disjoint sets with path halving and union by size.
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        Self { parent: (0..n as u32).collect(), size: vec![1; n] }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Returns true when `a` and `b` were in different sets.
    pub fn union(&mut self, a: u32, b: u32) -> bool {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        if self.size[ra as usize] < self.size[rb as usize] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb as usize] = ra;
        self.size[ra as usize] += self.size[rb as usize];
        true
    }

    /// Root of every element (a snapshot; equal roots ⇔ same component).
    pub fn roots(&mut self) -> Vec<u32> {
        (0..self.parent.len() as u32).map(|i| self.find(i)).collect()
    }

    /// For every element, the member of its component with the lowest `rank`.
    /// Independent of the order in which unions happened.
    pub fn representatives(&mut self, rank: &[u32]) -> Vec<u32> {
        let roots = self.roots();
        let mut best = vec![u32::MAX; roots.len()];
        for (i, &r) in roots.iter().enumerate() {
            let cur = best[r as usize];
            if cur == u32::MAX || rank[i] < rank[cur as usize] {
                best[r as usize] = i as u32;
            }
        }
        roots.iter().map(|&r| best[r as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representative_is_best_ranked_member() {
        let mut uf = UnionFind::new(5);
        uf.union(0, 1);
        uf.union(3, 1);
        let reps = uf.representatives(&[4, 3, 2, 0, 1]);
        assert_eq!(reps, vec![3, 3, 2, 3, 4]);
    }
}
